"""POST /v1/score (log-likelihood and perplexity of texts), POST /tokenize, POST /detokenize."""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lmaas.engine.client import EngineClient
from lmaas.errors import InvalidRequestError
from lmaas.gateway.serving.common import engine_request_id
from lmaas.gateway.serving.tasks import ClientGone, TaskServing
from lmaas.keys import KeyInfo
from lmaas.protocol.tasks import SCORE, TOKENIZE, TaskRequest
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
        engine, info = self.engine_for(body.model, request, key)
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

    async def tokenize_endpoint(
        self, body: TokenizeRequest, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        engine, info = self.engine_for(body.model, request, key)
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
                "model": body.model,
                "tokens": ids,
                "token_strs": (result.tokens or [[]])[0],
                "count": len(ids),
                "max_model_len": info.max_model_len,
            }
        )

    async def detokenize_endpoint(
        self, body: DetokenizeRequest, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        engine, info = self.engine_for(body.model, request, key)
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
        return JSONResponse({"model": body.model, "prompt": (result.texts or [""])[0]})
