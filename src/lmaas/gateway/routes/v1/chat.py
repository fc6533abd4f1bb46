from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmaas.gateway.deps import ChatServingDep, InferenceKey, RequestIdDep
from lmaas.gateway.routes.v1.docs import ERROR_RESPONSES
from lmaas.protocol.openai import ChatCompletion, ChatCompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERROR_RESPONSES)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    serving: ChatServingDep,
    request_id: RequestIdDep,
    key: InferenceKey,
) -> Response:
    """Chat completion; `stream: true` answers with server-sent events."""
    return await serving.create(body, request, request_id, key)
