"""Compatibility routes of the original microservices: ``POST /generate`` and ``POST /embed``,
with their request and response shapes unchanged (see ``serving/compat.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmaas.gateway.deps import CompatServingDep, InferenceKey, RequestIdDep
from lmaas.gateway.routes.v1.docs import ERROR_RESPONSES
from lmaas.protocol.compat import EmbedSentenceRequest, GenerateTextRequest

router = APIRouter(tags=["compatibility"])


@router.post("/generate", responses=ERROR_RESPONSES)
async def generate(
    body: GenerateTextRequest,
    request: Request,
    serving: CompatServingDep,
    request_id: RequestIdDep,
    key: InferenceKey,
) -> Response:
    """`{"text"}` -> `{"result": <the continuation>}` (a completion, greedy unless
    `temperature` is set; `max_tokens` 64 by default). Without `model`, the first served model
    that can generate."""
    return await serving.generate(body, request, request_id, key)


@router.post("/embed", responses=ERROR_RESPONSES)
async def embed(
    body: EmbedSentenceRequest,
    request: Request,
    serving: CompatServingDep,
    request_id: RequestIdDep,
    key: InferenceKey,
) -> Response:
    """`{"sentence"}` -> `{"result": [{"token", "embedding"}, ...]}`: every token of the
    sentence with its contextual vector (an encoder's last hidden state, not pooled: the same
    word in two sentences gets two vectors). Without `model`, the first served encoder."""
    return await serving.embed(body, request, request_id, key)
