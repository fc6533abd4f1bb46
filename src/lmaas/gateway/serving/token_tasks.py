"""Token-level tasks: a masked language model's guesses at its mask tokens
(``POST /v1/fill_mask``) and an encoder's contextual vector per token (``POST /embed``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from starlette.requests import Request
from starlette.responses import Response

from lmaas.engine.client import EngineClient
from lmaas.errors import InvalidRequestError, ServiceUnavailableError
from lmaas.gateway.serving.common import engine_request_id
from lmaas.gateway.serving.tasks import ClientGone, TaskServing
from lmaas.keys import KeyInfo
from lmaas.protocol.tasks import EMBED_TOKENS, FILL_MASK, TaskRequest, TaskResult
from lmaas.protocol.understanding import FillMaskRequest

WHAT = {
    FILL_MASK: "fill masks (a *ForMaskedLM model)",
    EMBED_TOKENS: "embed tokens (an encoder)",
    "generate": "generate",
}


def first_able(engines: Mapping[str, EngineClient], capability: str, key: KeyInfo | None) -> str:
    """The model a request that names none goes to: the first served model (in the order the
    server serves them) that can do ``capability`` and that the key may use; a 400 when none
    can, a 503 while one that might is still loading."""
    loading = []
    for name, engine in engines.items():
        if key is not None and not key.allows_model(name):
            continue
        if engine.info is None:
            loading.append(name)
        elif capability in engine.info.capabilities:
            return name
    if loading:
        raise ServiceUnavailableError(
            f"no loaded model can {WHAT.get(capability, capability)} yet "
            f"(loading: {', '.join(sorted(loading))})"
        )
    raise InvalidRequestError(
        f"no served model can {WHAT.get(capability, capability)}; name one that can in model",
        param="model",
        code="model_not_found",
    )


class TokenTaskServing(TaskServing):
    async def fill_mask(
        self, body: FillMaskRequest, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        model = body.model if body.model is not None else first_able(self.engines, FILL_MASK, key)
        engine, info = await self.engine_for(model, request, key)
        self.require(engine, info, FILL_MASK)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        self.check_count(len(texts))
        if any(not t for t in texts):
            raise InvalidRequestError("input must not contain empty strings", param="input")
        request.state.record_params = {"inputs": len(texts), "top_k": body.top_k}
        if self.store_prompts:
            request.state.record_prompt = json.dumps(texts)
        task = TaskRequest(
            request_id=engine_request_id(request_id, 0),
            kind="fill_mask",
            texts=texts,
            top_k=body.top_k,
            truncate=body.truncate,
        )
        try:
            result = await self.run(engine, request, task)
        except ClientGone:
            return Response(status_code=499)
        self._account(request, result)
        data = [
            {
                "index": i,
                "masks": [
                    {
                        "position": fill.position,
                        "predictions": [
                            {"token": t, "token_id": tid, "score": score, "sequence": seq}
                            for t, tid, score, seq in zip(
                                fill.tokens,
                                fill.token_ids,
                                fill.scores,
                                fill.sequences,
                                strict=True,
                            )
                        ],
                    }
                    for fill in fills
                ],
            }
            for i, fills in enumerate(result.fills or [])
        ]
        usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
        return _json({"object": "list", "data": data, "model": engine.name, "usage": usage})

    async def embed_tokens(
        self, model: str | None, text: str, request: Request, request_id: str, key: KeyInfo | None
    ) -> tuple[list[str], npt.NDArray[np.float32]] | None:
        """Every token of ``text`` (special tokens left out) and its contextual vector, or
        ``None`` when the client left."""
        name = model if model is not None else first_able(self.engines, EMBED_TOKENS, key)
        engine, info = await self.engine_for(name, request, key)
        self.require(engine, info, EMBED_TOKENS)
        if not text:
            raise InvalidRequestError("sentence must not be empty", param="sentence")
        request.state.record_params = {"inputs": 1}
        if self.store_prompts:
            request.state.record_prompt = json.dumps([text])
        task = TaskRequest(
            request_id=engine_request_id(request_id, 0), kind="embed_tokens", texts=[text]
        )
        try:
            result = await self.run(engine, request, task)
        except ClientGone:
            return None
        self._account(request, result)
        dim = result.dim or 0
        vectors = np.frombuffer(result.embeddings or b"", dtype="<f4").reshape(-1, dim)
        return (result.tokens or [[]])[0], vectors

    @staticmethod
    def _account(request: Request, result: TaskResult) -> None:
        request.state.timing.prompt_tokens = result.prompt_tokens
        request.state.timing.queue_time = result.queue_time


def _json(body: Any) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )
