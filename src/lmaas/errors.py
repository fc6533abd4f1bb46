"""The lmaas error tree.

Every error a client can cause or observe is an ``LmaasError`` subclass carrying its HTTP status
and OpenAI error ``type``. The gateway translates them once, at the edge, into
``{"error": {"message", "type", "param", "code"}}``; nothing else in the code base builds HTTP
error bodies.

Errors raised in a worker cross the IPC channel as ``error.to_wire()`` and are raised again in
the gateway by ``from_wire``: the exact class, keyed by its stable ``wire_name``, with the same
message, param, code and headers.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

log = logging.getLogger(__name__)


class LmaasError(Exception):
    """Base class: an error with a message safe to show to the client.

    A subclass that may cross the worker channel names itself with its own ``wire_name``; one
    that does not is rebuilt on the other side as its nearest ancestor that does.
    """

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None
    wire_name: ClassVar[str] = "error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "wire_name" in cls.__dict__:
            _register(cls)

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error envelope for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_wire(self) -> dict[str, Any]:
        """This error as a msgpack-safe map, for ``from_wire`` on the other end of a channel."""
        wire: dict[str, Any] = {
            "kind": self.wire_name,
            "message": self.message,
            "param": self.param,
            "code": self.code,
        }
        if self.headers:
            wire["headers"] = dict(self.headers)
        return wire


_BY_WIRE_NAME: dict[str, type[LmaasError]] = {}


def _register(cls: type[LmaasError]) -> None:
    taken = _BY_WIRE_NAME.get(cls.wire_name)
    if taken is not None and taken is not cls:
        raise TypeError(f"{cls.__name__}: wire_name {cls.wire_name!r} is {taken.__name__}'s")
    _BY_WIRE_NAME[cls.wire_name] = cls


_register(LmaasError)


class InvalidRequestError(LmaasError):
    status_code = 400
    error_type = "invalid_request_error"
    wire_name = "invalid_request"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"
    wire_name = "context_length_exceeded"


class AuthenticationError(LmaasError):
    """No key, an unknown key or a revoked key."""

    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"
    wire_name = "authentication"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class PermissionDeniedError(LmaasError):
    """A valid key without the scope or the model the request needs."""

    status_code = 403
    error_type = "permission_error"
    default_code = "insufficient_permissions"
    wire_name = "permission_denied"


class ConflictError(LmaasError):
    """The request conflicts with the current state (e.g. deleting a deployed version)."""

    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"
    wire_name = "conflict"


class NotFoundError(LmaasError):
    status_code = 404
    error_type = "not_found_error"
    default_code = "model_not_found"
    wire_name = "not_found"


class RequestTooLargeError(LmaasError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"
    wire_name = "request_too_large"


class UnsupportedMediaTypeError(LmaasError):
    status_code = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"
    wire_name = "unsupported_media_type"


class OverloadedError(LmaasError):
    """The waiting queue is full; the client should retry after ``Retry-After`` seconds."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "queue_full"
    wire_name = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})


class RateLimitExceededError(LmaasError):
    """An API key used up its requests or tokens per minute; ``headers`` carry ``Retry-After``
    and the ``x-ratelimit-*`` set."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    wire_name = "rate_limit_exceeded"

    def __init__(self, message: str, *, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)


class ServiceUnavailableError(LmaasError):
    """The model cannot serve right now (worker starting, crashed or restarting)."""

    status_code = 503
    error_type = "service_unavailable_error"
    default_code = "model_unavailable"
    wire_name = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 2) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class InternalError(LmaasError):
    status_code = 500
    error_type = "server_error"
    default_code = "internal_error"
    wire_name = "internal"


class MethodNotAllowedError(LmaasError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "bad_method"
    wire_name = "method_not_allowed"


def from_wire(wire: Any) -> LmaasError:
    """The error ``LmaasError.to_wire`` described, as its own class again.

    An error of a kind this process does not know, or a malformed one, becomes an
    ``InternalError`` whose message says nothing of what the peer sent.
    """
    if not isinstance(wire, dict):
        return _unreadable(wire)
    cls = _BY_WIRE_NAME.get(str(wire.get("kind")))
    message, param, code = wire.get("message"), wire.get("param"), wire.get("code")
    headers = wire.get("headers") or {}
    if (
        cls is None
        or not isinstance(message, str)
        or not isinstance(param, str | None)
        or not isinstance(code, str | None)
        or not isinstance(headers, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        return _unreadable(wire)
    # Rebuilt around the subclasses' constructors, which fix some fields (Retry-After, ...):
    # every field is restored as it was sent.
    error = cls.__new__(cls)
    LmaasError.__init__(error, message, param=param, code=code, headers=headers)
    return error


def _unreadable(wire: Any) -> InternalError:
    kind = wire.get("kind") if isinstance(wire, dict) else type(wire).__name__
    log.warning("an error of unknown kind or shape crossed the worker channel: %.80r", kind)
    return InternalError("the model's worker failed with an error the gateway cannot read")
