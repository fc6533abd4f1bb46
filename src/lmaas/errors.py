"""The lmaas error tree.

Every error a client can cause or observe is an ``LmaasError`` subclass carrying its HTTP status
and OpenAI error ``type``. The gateway translates them once, at the edge, into
``{"error": {"message", "type", "param", "code"}}``; nothing else in the code base builds HTTP
error bodies.
"""

from __future__ import annotations

from typing import Any


class LmaasError(Exception):
    """Base class: an error with a message safe to show to the client."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None

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


class InvalidRequestError(LmaasError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class AuthenticationError(LmaasError):
    """No key, an unknown key or a revoked key."""

    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class PermissionDeniedError(LmaasError):
    """A valid key without the scope or the model the request needs."""

    status_code = 403
    error_type = "permission_error"
    default_code = "insufficient_permissions"


class ConflictError(LmaasError):
    """The request conflicts with the current state (e.g. deleting a deployed version)."""

    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class NotFoundError(LmaasError):
    status_code = 404
    error_type = "not_found_error"
    default_code = "model_not_found"


class RequestTooLargeError(LmaasError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaTypeError(LmaasError):
    status_code = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"


class OverloadedError(LmaasError):
    """The waiting queue is full; the client should retry after ``Retry-After`` seconds."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "queue_full"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class ServiceUnavailableError(LmaasError):
    """The model cannot serve right now (worker starting, crashed or restarting)."""

    status_code = 503
    error_type = "service_unavailable_error"
    default_code = "model_unavailable"

    def __init__(self, message: str, *, retry_after: int = 2) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class InternalError(LmaasError):
    status_code = 500
    error_type = "server_error"
    default_code = "internal_error"


ERRORS_BY_STATUS: dict[int, type[LmaasError]] = {
    400: InvalidRequestError,
    409: ConflictError,
    404: NotFoundError,
    413: RequestTooLargeError,
    415: UnsupportedMediaTypeError,
    429: OverloadedError,
    503: ServiceUnavailableError,
    500: InternalError,
}


def error_from_status(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> LmaasError:
    """Rebuild an error that crossed a process boundary as (status, message, param, code)."""
    cls = ERRORS_BY_STATUS.get(status, InternalError)
    if cls in (OverloadedError, ServiceUnavailableError):
        return cls(message)
    return cls(message, param=param, code=code)
