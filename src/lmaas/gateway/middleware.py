"""Pure ASGI middleware: request ids, body limits, content types, access log, request counts.

It buffers the (size-capped) body before the app sees it, so an oversized or mistyped request
is refused before any parsing, and it keeps the original ``receive`` for disconnect detection.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Container
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmaas.errors import LmaasError, RequestTooLargeError, UnsupportedMediaTypeError
from lmaas.gateway.recording import request_record
from lmaas.records.store import RecordWriter
from lmaas.telemetry.logging import accept_request_id, log_access
from lmaas.telemetry.metrics import Metrics

_JSON_TYPES = ("application/json",)
_INFERENCE_PREFIX = "/v1/"
# Inference routes outside /v1 (vLLM's spelling): same body checks, same request counts.
_INFERENCE_EXTRA = ("/tokenize", "/detokenize")


def _is_inference(path: str) -> bool:
    return path.startswith(_INFERENCE_PREFIX) or path in _INFERENCE_EXTRA


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def _send_error(send: Send, error: LmaasError, request_id: str) -> None:
    body = json.dumps(error.to_body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        (b"connection", b"close"),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: Metrics,
        served_models: Container[str],
        access_log: bool,
        recorder: RecordWriter | None = None,
        version_of: Callable[[str], int | None] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.served_models = served_models
        self.access_log = access_log
        self.recorder = recorder
        self.version_of = version_of or (lambda _name: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        received_at = datetime.now(UTC)
        request_id = accept_request_id(_header(scope, b"x-request-id"))
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status_holder = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            replay = await self._check_body(scope, receive)
        except LmaasError as exc:
            status_holder["status"] = exc.status_code
            await _send_error(send, exc, request_id)
        else:
            await self.app(scope, replay, send_wrapper)
        finally:
            self._after(scope, state, status_holder["status"], start, request_id)
            if self.recorder is not None:
                record = request_record(
                    scope,
                    state,
                    http_status=status_holder["status"],
                    received_at=received_at,
                    latency_s=time.monotonic() - start,
                    request_id=request_id,
                    version_of=self.version_of,
                )
                if record is not None:
                    self.recorder.record(record)

    async def _check_body(self, scope: Scope, receive: Receive) -> Receive:
        # Inference bodies are small JSON and are buffered here; admin uploads stream through
        # and are capped by the model store instead.
        if scope["method"] not in ("POST", "PUT", "PATCH") or not _is_inference(scope["path"]):
            return receive
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise RequestTooLargeError(
                f"request body of {length} bytes exceeds the limit of {self.max_body_bytes}"
            )
        ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if ctype not in _JSON_TYPES:
            raise UnsupportedMediaTypeError(
                f"Content-Type must be application/json, got {ctype or 'nothing'!r}"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                chunks = []
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                raise RequestTooLargeError(
                    f"request body exceeds the limit of {self.max_body_bytes} bytes"
                )
            chunks.append(body)
            if not message.get("more_body", False):
                break
        buffered = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": buffered, "more_body": False}
            return await receive()

        return replay

    def _after(
        self, scope: Scope, state: dict[str, Any], status: int, start: float, request_id: str
    ) -> None:
        path = scope["path"]
        model = state.get("model")
        if _is_inference(path) and scope["method"] == "POST":
            label = model if model in self.served_models else "unknown"
            self.metrics.requests.labels(label, path, str(status)).inc()
        if not self.access_log:
            return
        fields: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "request_id": request_id,
            "client": (scope.get("client") or ("-",))[0],
            "method": scope["method"],
            "path": path,
            "status": status,
            "duration_ms": round((time.monotonic() - start) * 1000, 1),
        }
        timing = state.get("timing")
        if timing is not None:
            fields.update(timing.access_fields())
        elif model is not None:
            fields["model"] = model
        log_access(fields)
