"""The compatibility routes of the original microservices, over the same pipelines as ``/v1``:

- ``POST /generate {"text"}`` -> ``{"result": <the continuation>}``: a completion (admission,
  metrics, request records and errors as ``/v1/completions``);
- ``POST /embed {"sentence"}`` -> ``{"result": [{"token", "embedding"}, ...]}``: every token
  with its contextual vector from an encoder (``embed_tokens``), as ELMo's service gave.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from lmaas.gateway.serving.completions import CompletionServing
from lmaas.gateway.serving.token_tasks import TokenTaskServing, first_able
from lmaas.keys import KeyInfo
from lmaas.protocol.compat import EmbedSentenceRequest, GenerateTextRequest
from lmaas.protocol.openai import CompletionRequest
from lmaas.protocol.tasks import GENERATE


class CompatServing:
    def __init__(self, completions: CompletionServing, tokens: TokenTaskServing) -> None:
        self.completions = completions
        self.tokens = tokens

    async def generate(
        self, body: GenerateTextRequest, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        model = body.model
        if model is None:
            model = first_able(self.completions.engines, GENERATE, key)
        completion = CompletionRequest(
            model=model,
            prompt=body.text,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
        )
        response = await self.completions.create(completion, request, request_id, key)
        if response.status_code != 200:  # 499: the client left
            return response
        text = orjson.loads(bytes(response.body))["choices"][0]["text"]
        return Response(orjson.dumps({"result": text}), media_type="application/json")

    async def embed(
        self, body: EmbedSentenceRequest, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        found = await self.tokens.embed_tokens(body.model, body.sentence, request, request_id, key)
        if found is None:
            return Response(status_code=499)
        tokens, vectors = found
        result = [{"token": t, "embedding": v} for t, v in zip(tokens, vectors, strict=True)]
        return Response(
            orjson.dumps({"result": result}, option=orjson.OPT_SERIALIZE_NUMPY),
            media_type="application/json",
        )
