from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmaas.gateway.deps import CompletionServingDep, InferenceKey, RequestIdDep
from lmaas.gateway.routes.v1.docs import ERROR_RESPONSES
from lmaas.protocol.openai import Completion, CompletionRequest

router = APIRouter()


@router.post("/v1/completions", response_model=Completion, responses=ERROR_RESPONSES)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    serving: CompletionServingDep,
    request_id: RequestIdDep,
    key: InferenceKey,
) -> Response:
    """Text completion; `echo` with `logprobs` (and `max_tokens: 0`) scores a prompt."""
    return await serving.create(body, request, request_id, key)
