"""Server-sent events framing for OpenAI streams."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"
MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event; JSON never contains a raw newline, so one line is enough."""
    return (
        b"data: "
        + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        + b"\n\n"
    )


def model_event(model: BaseModel) -> bytes:
    """One ``data:`` event holding ``model`` as JSON (pydantic's serializer, straight to bytes)."""
    return b"data: " + model.__pydantic_serializer__.to_json(model) + b"\n\n"
