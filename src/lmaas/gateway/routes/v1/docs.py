from typing import Any

from lmaas.protocol.openai import ErrorResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Invalid request",
        404: "Unknown model",
        413: "Body too large",
        415: "Not JSON",
        429: "Queue full (see Retry-After)",
        503: "Model not ready",
    }.items()
}
