"""Pure ASGI middleware: request ids, body limits, content types, access log, request counts.

It buffers the (size-capped) body before the app sees it, so an oversized or mistyped request
is refused before any parsing, and it keeps the original ``receive`` for disconnect detection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import weakref
from collections.abc import Callable, Container, Iterator
from datetime import UTC, datetime
from typing import Any

from starlette.routing import Match, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmaas.errors import LmaasError, RequestTooLargeError, UnsupportedMediaTypeError
from lmaas.gateway.recording import request_record
from lmaas.gateway.serving import sse
from lmaas.gateway.shutdown import Drain, refusal
from lmaas.records.store import RecordWriter
from lmaas.telemetry.logging import accept_request_id, log_access
from lmaas.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)

_JSON_TYPES = ("application/json",)
_INFERENCE_PREFIX = "/v1/"
# Inference routes outside /v1 (vLLM's spelling, and the original microservices'
# compatibility routes): same body checks, same request counts.
_INFERENCE_EXTRA = ("/tokenize", "/detokenize", "/generate", "/embed")
# Inference routes whose body is an upload streamed to the store (multipart, size-capped there).
_STREAMED_UPLOADS = ("/v1/files",)
# Inference routes that take no body (a cancel), as (prefix, suffix): no Content-Type is needed.
_BODYLESS = (
    ("/v1/batches/", "/cancel"),
    ("/v1/fine_tuning/jobs/", "/cancel"),
    ("/v1/evals/", "/cancel"),
)
# OpenAI's cancel of an eval run: POST /v1/evals/{eval_id}/runs/{run_id}, with no body.
_EVAL_RUN = re.compile(r"^/v1/evals/[^/]+/runs/[^/]+$")


def _bodyless(path: str) -> bool:
    if any(path.startswith(head) and path.endswith(tail) for head, tail in _BODYLESS):
        return True
    return _EVAL_RUN.match(path) is not None


# Answered while the server drains, so probes see it alive and not ready.
_DRAIN_OPEN = ("/health", "/ready")


def _is_inference(path: str) -> bool:
    return path.startswith(_INFERENCE_PREFIX) or path in _INFERENCE_EXTRA


def route_label(scope: Scope) -> str:
    """The route a request went to as its template (``/v1/files/{file_id}``), or ``other``
    for a path no route serves: a metric label must not take any path a client sends."""
    path = getattr(scope.get("route"), "path", None)  # set by the router once it matched
    if isinstance(path, str) and path:
        return path
    # Refused before routing (size, content type, drain), or no route at all: match the
    # path against the app's documented route templates.
    for pattern, template in _templates(scope.get("app")):
        if pattern.fullmatch(scope["path"]):
            return template
    return "other"


_TEMPLATES: weakref.WeakKeyDictionary[Any, list[tuple[re.Pattern[str], str]]] = (
    weakref.WeakKeyDictionary()
)


def _templates(app: Any) -> list[tuple[re.Pattern[str], str]]:
    """The path templates of the app's routes, compiled once per app (cheap: no schema is
    built on the request path)."""
    if app is None or not hasattr(app, "routes"):
        return []
    found = _TEMPLATES.get(app)
    if found is None:
        paths = dict.fromkeys(_route_paths(app.routes))
        found = _TEMPLATES[app] = [(compile_path(t)[0], t) for t in paths]
    return found


def _route_paths(routes: Any) -> Iterator[str]:
    for route in routes:
        path = getattr(route, "path", None)
        if isinstance(path, str) and path:
            yield path
        # A router included in another (FastAPI keeps it whole, with its own routes).
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None:
            yield from _route_paths(inner)


def _routed(scope: Scope) -> bool:
    """Whether a route serves the request's path (with any method)."""
    routes = getattr(scope.get("app"), "routes", ())
    return any(route.matches(scope)[0] is not Match.NONE for route in routes)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def _end_cut(send: Send, response: _Response, state: dict[str, Any], request_id: str) -> None:
    """End a request the drain cut: a 503 before the response started; an error event and
    ``[DONE]`` for a stream under way (a plain body already started can only be closed)."""
    error = refusal()
    state["error"] = error.message
    if not response.started:
        await _send_error(send, error, request_id)
        response.status = error.status_code
        return
    if response.complete:
        return
    body = sse.event(error.to_body()) + sse.DONE if response.event_stream else b""
    await send({"type": "http.response.body", "body": body, "more_body": False})
    response.complete = True


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


async def _charge_tokens(state: dict[str, Any]) -> None:
    """Charge the tokens the request used to its key's tokens-per-minute budget."""
    charge = state.get("charge_tokens")
    timing = state.get("timing")
    if charge is None or timing is None:
        return
    try:
        await charge(timing.prompt_tokens + timing.completion_tokens)
    except Exception:
        # A storage outage (Redis down) must not turn a served request into an error.
        logger.exception("could not charge tokens to the key's rate limit")


class _Response:
    """The app's side of one exchange: what it has sent so far (to end a request the drain
    cuts, and to record it) and whether the client went away."""

    def __init__(
        self, send: Send, receive: Receive, request_id: str, state: dict[str, Any]
    ) -> None:
        self._send = send
        self._state = state
        self._receive = receive
        self._request_id = request_id.encode()
        self.status = 500
        self.started = False
        self.complete = False
        self.event_stream = False
        self.disconnected = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started = True
            headers = list(message.get("headers", []))
            self.event_stream = any(
                k.lower() == b"content-type" and v.startswith(sse.MEDIA_TYPE.encode())
                for k, v in headers
            )
            headers.append((b"x-request-id", self._request_id))
            # Set by a route's dependency (the x-ratelimit-* of gateway/auth.py).
            extra = self._state.get("response_headers") or {}
            headers += [(k.encode(), v.encode()) for k, v in extra.items()]
            message = {**message, "headers": headers}
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            self.complete = True
        await self._send(message)

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        return message

    @property
    def cut_off(self) -> bool:
        """The client left while the response was under way (a stream it stopped reading)."""
        return self.disconnected and self.started and not self.complete


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
        drain: Drain | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.served_models = served_models
        self.access_log = access_log
        self.recorder = recorder
        self.version_of = version_of or (lambda _name: None)
        self.drain = drain or Drain(0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        received_at = datetime.now(UTC)
        request_id = accept_request_id(_header(scope, b"x-request-id"))
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        response = _Response(send, receive, request_id, state)

        task = asyncio.current_task()
        try:
            if self.drain.draining and scope["path"] not in _DRAIN_OPEN:
                raise refusal()
            replay = await self._check_body(scope, response.receive)
            if task is not None:
                self.drain.track(task)
            await self.app(scope, replay, response.send)
        except LmaasError as exc:
            response.status = exc.status_code
            await _send_error(send, exc, request_id)
        except asyncio.CancelledError:
            if not self.drain.cutting or task is None:
                raise
            task.uncancel()  # our own cut: end the request cleanly instead of a 500
            await _end_cut(send, response, state, request_id)
        finally:
            if task is not None:
                self.drain.untrack(task)
            if response.cut_off:
                state["cancelled"] = True
            self._after(scope, state, response.status, start, request_id)
            self._record(scope, state, response.status, received_at, start, request_id)
            await _charge_tokens(state)

    def _record(
        self,
        scope: Scope,
        state: dict[str, Any],
        status: int,
        received_at: datetime,
        start: float,
        request_id: str,
    ) -> None:
        if self.recorder is None:
            return
        record = request_record(
            scope,
            state,
            http_status=status,
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
        # A path no route serves is the router's 404, whatever the body and its type.
        if (
            scope["method"] not in ("POST", "PUT", "PATCH")
            or not _is_inference(scope["path"])
            or not _routed(scope)
        ):
            return receive
        path = scope["path"]
        if path in _STREAMED_UPLOADS:
            return receive
        if _bodyless(path):
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
            self.metrics.requests.labels(label, route_label(scope), str(status)).inc()
            key = state.get("api_key")
            self.metrics.key_requests.labels(
                getattr(key, "id", None) or "none",
                getattr(key, "name", None) or "none",
                f"{status // 100}xx",
            ).inc()
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
