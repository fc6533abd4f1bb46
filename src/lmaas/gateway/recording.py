"""Turn a finished inference request into a request record (written later, in batches)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.types import Scope

from lmaas.records.store import RecordStatus, RequestRecord

ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embedding",
    "/v1/classify": "classify",
    "/v1/nli": "nli",
    "/v1/score": "score",
    "/v1/fill_mask": "fill_mask",
    "/generate": "completion",
    "/embed": "embed_tokens",
    "/tokenize": "tokenize",
    "/detokenize": "tokenize",
}


def request_record(
    scope: Scope,
    state: dict[str, Any],
    *,
    http_status: int,
    received_at: datetime,
    latency_s: float,
    request_id: str,
    version_of: Callable[[str], int | None],
) -> RequestRecord | None:
    """The record of one request to an inference route, or None for other routes."""
    endpoint = ENDPOINTS.get(scope["path"])
    if endpoint is None or scope["method"] != "POST":
        return None
    timing = state.get("timing")
    key = state.get("api_key")
    model = state.get("model")
    error = state.get("error") or (timing.error if timing is not None else None)
    status: RecordStatus = "ok"
    if http_status == 499 or state.get("cancelled"):
        status = "cancelled"
    elif http_status >= 400 or error:
        status = "error"
    client = scope.get("client")
    return RequestRecord(
        request_id=request_id,
        received_at=received_at.astimezone(UTC),
        endpoint=endpoint,
        model=model,
        version=version_of(model) if model else None,
        client_ip=client[0] if client else None,
        api_key_id=getattr(key, "id", None),
        params=state.get("record_params") or {},
        prompt=state.get("record_prompt"),
        status=status,
        http_status=http_status,
        queue_time_ms=_ms(timing.queue_time) if timing and timing.queue_time is not None else None,
        ttft_ms=_ms(timing.first_token - timing.arrival)
        if timing and timing.first_token is not None
        else None,
        latency_ms=_ms(latency_s) or 0.0,
        prompt_tokens=timing.prompt_tokens if timing else 0,
        completion_tokens=timing.completion_tokens if timing else 0,
        error=str(error)[:2000] if error else None,
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
