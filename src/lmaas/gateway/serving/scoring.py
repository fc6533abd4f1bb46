"""POST /v1/score (log-likelihood and perplexity of texts), POST /tokenize, POST /detokenize,
GET /tokenizer_info.

The tokenizer routes follow vLLM's (which lm-evaluation-harness's remote tokenizer reads):
``model`` may be left out when one served model can generate, and ``/tokenizer_info`` answers
the tokenizer's settings in the shape of a ``tokenizer_config.json``.
"""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lmaas.engine.client import EngineClient
from lmaas.errors import InvalidRequestError, ServiceUnavailableError
from lmaas.gateway.serving.common import engine_request_id
from lmaas.gateway.serving.tasks import ClientGone, TaskServing
from lmaas.keys import KeyInfo
from lmaas.protocol.engine import ModelInfo
from lmaas.protocol.tasks import GENERATE, SCORE, TOKENIZE, TaskRequest
from lmaas.protocol.understanding import (
    DetokenizeRequest,
    ScorePair,
    ScoreRequest,
    TokenizeRequest,
)


def score_entry(index: int, logprobs: list[float], tokens: list[str]) -> dict[str, object]:
    """One scored text: per-token logprobs, their sum, mean and the perplexity
    ``exp(-mean)``."""
    total = float(sum(logprobs))
    n = len(logprobs)
    mean = total / n if n else 0.0
    return {
        "object": "score",
        "index": index,
        "tokens": tokens,
        "token_logprobs": logprobs,
        "num_tokens": n,
        "total_logprob": total,
        "mean_logprob": mean,
        "perplexity": math.exp(-mean) if n else None,
    }


class ScoringServing(TaskServing):
    async def score(
        self, body: ScoreRequest, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        engine, info = await self.engine_for(body.model, request, key)
        self.require(engine, info, SCORE)
        items = body.input if isinstance(body.input, list) else [body.input]
        self.check_count(len(items))
        for item in items:
            empty = not item if isinstance(item, str) else not item.continuation
            if empty:
                raise InvalidRequestError(
                    "input must not contain empty texts or continuations", param="input"
                )
        request.state.record_params = {"inputs": len(items)}
        try:
            seqs, starts = await self._sequences(engine, request, request_id, items)
            scored = await self.logprobs(
                engine, info, request, request_id, seqs, starts, truncate=body.truncate
            )
        except ClientGone:
            return Response(status_code=499)
        tokens = sum(len(s) for s in seqs)
        request.state.timing.prompt_tokens = tokens
        return JSONResponse(
            {
                "object": "list",
                "model": body.model,
                "data": [score_entry(i, lps, toks) for i, (lps, toks) in enumerate(scored)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _sequences(
        self,
        engine: EngineClient,
        request: Request,
        request_id: str,
        items: list[str | ScorePair],
    ) -> tuple[list[list[int]], list[int]]:
        """Token ids of each input and where scoring starts: after the first token of a text
        (nothing predicts it), or at the continuation of a prompt/continuation pair (tokenized
        apart, so the boundary is exact)."""
        heads = [item if isinstance(item, str) else item.prompt for item in items]
        head_ids = await self.tokenize(engine, request, request_id, heads, add_special=True)
        tails = [item.continuation for item in items if isinstance(item, ScorePair)]
        tail_ids = (
            await self.tokenize(engine, request, request_id, tails, add_special=False)
            if tails
            else []
        )
        seqs: list[list[int]] = []
        starts: list[int] = []
        t = 0
        for item, ids in zip(items, head_ids, strict=True):
            if isinstance(item, str):
                seqs.append(ids)
                starts.append(1)
            else:
                seqs.append(ids + tail_ids[t])
                starts.append(len(ids))
                t += 1
        return seqs, starts

    def default_model(self, key: KeyInfo | None) -> str:
        """The model a tokenizer route serves when the request names none: the one served
        model that can generate (and the key may use); else a 400 (503 while none is loaded)."""
        able = [
            name
            for name, engine in self.engines.items()
            if engine.info is not None
            and GENERATE in engine.info.capabilities
            and (key is None or key.allows_model(name))
        ]
        if len(able) == 1:
            return able[0]
        if able:
            raise InvalidRequestError(
                f"model is required: {len(able)} served models can generate "
                f"({', '.join(sorted(able))}); name one",
                param="model",
            )
        loading = sorted(name for name, engine in self.engines.items() if engine.info is None)
        if loading:
            raise ServiceUnavailableError(
                f"no model that can generate is loaded yet (loading: {', '.join(loading)})"
            )
        raise InvalidRequestError("model is required: no served model can generate", param="model")

    async def tokenizer_info(
        self, model: str | None, request: Request, key: KeyInfo | None
    ) -> Response:
        engine, info = await self.engine_for(model or self.default_model(key), request, key)
        self.require(engine, info, TOKENIZE)
        return JSONResponse(tokenizer_config(engine.name, info))

    async def tokenize_endpoint(
        self, body: TokenizeRequest, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        engine, info = await self.engine_for(body.model or self.default_model(key), request, key)
        self.require(engine, info, TOKENIZE)
        task = TaskRequest(
            request_id=engine_request_id(request_id, 0),
            kind="tokenize",
            texts=[body.prompt],
            add_special=body.add_special_tokens,
        )
        try:
            result = await self.run(engine, request, task)
        except ClientGone:
            return Response(status_code=499)
        ids = (result.token_ids or [[]])[0]
        return JSONResponse(
            {
                "model": body.model or engine.name,
                "tokens": ids,
                "token_strs": (result.tokens or [[]])[0],
                "count": len(ids),
                "max_model_len": info.max_model_len,
            }
        )

    async def detokenize_endpoint(
        self, body: DetokenizeRequest, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        engine, info = await self.engine_for(body.model or self.default_model(key), request, key)
        self.require(engine, info, TOKENIZE)
        if len(body.tokens) > info.max_model_len * 4:
            raise InvalidRequestError(
                f"{len(body.tokens)} tokens given; at most {info.max_model_len * 4}",
                param="tokens",
            )
        task = TaskRequest(
            request_id=engine_request_id(request_id, 0),
            kind="detokenize",
            token_ids=[body.tokens],
        )
        try:
            result = await self.run(engine, request, task)
        except ClientGone:
            return Response(status_code=499)
        return JSONResponse(
            {"model": body.model or engine.name, "prompt": (result.texts or [""])[0]}
        )


def tokenizer_config(model: str, info: ModelInfo) -> dict[str, object]:
    """A served model's tokenizer settings under ``tokenizer_config.json``'s names, as vLLM's
    ``/tokenizer_info`` gives them, plus the token ids and the vocabulary size."""
    return {
        "model": model,
        "tokenizer_class": "LlamaCppTokenizer" if info.backend == "llamacpp" else "AutoTokenizer",
        "bos_token": info.bos_token or None,
        "eos_token": info.eos_token or None,
        "bos_token_id": info.bos_token_id,
        "eos_token_id": info.eos_token_id,
        "add_bos_token": info.add_bos,
        "model_max_length": info.max_model_len,
        "vocab_size": info.n_vocab,
        "chat_template": info.chat_template,
    }
