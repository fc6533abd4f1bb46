"""The one place exceptions become HTTP responses (the OpenAI error envelope)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from lmaas.errors import (
    InternalError,
    InvalidRequestError,
    LmaasError,
    MethodNotAllowedError,
    NotFoundError,
)

log = logging.getLogger(__name__)


def _response(error: LmaasError) -> JSONResponse:
    body = error.to_body()
    detail = body["error"]
    for field in ("message", "param"):
        # An error may quote the request (a model name), which may hold lone surrogates.
        if isinstance(detail[field], str):
            detail[field] = _printable(detail[field])
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


def _printable(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate is written as its escape."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# Where FastAPI says a value came from: the first element of a location, not a field.
_SOURCES = {"body", "path", "query", "header", "cookie"}


def _most_telling(errors: Sequence[Any]) -> Any:
    """The complaint to report: the first that is not a type mismatch, if any.

    A value that fails every member of a union gets one complaint per member; when it has
    the shape of one member (a list of token ids) but breaks that member's rule (an id out
    of range), that rule is what the client needs to hear, not "should be a valid string".
    """
    for error in errors:
        if not str(error.get("type", "")).endswith("_type"):
            return error
    return errors[0]


def validation_error(exc: RequestValidationError) -> InvalidRequestError:
    """Turn pydantic's most telling complaint into one clear message naming the parameter."""
    errors = exc.errors()
    if not errors:
        return InvalidRequestError("invalid request body")
    first = _most_telling(errors)
    loc = [str(p) for p in first.get("loc", ())]
    if loc and loc[0] in _SOURCES:
        loc = loc[1:]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return InvalidRequestError(
            f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip()
        )
    if not loc and kind in ("model_attributes_type", "dict_type", "model_type"):
        return InvalidRequestError("the request body must be a JSON object")
    if kind == "missing" and not loc:
        return InvalidRequestError("the request body is empty; send a JSON object")
    # Union members add their type names to the location; keep the field path only.
    path = [p for p in loc if not p[:1].isupper() and "[" not in p and p not in _TYPE_NAMES]
    param = ".".join(path) or None
    message = first.get("msg", "invalid value")
    # protocol/unsupported.py's refusals carry OpenAI's codes for them.
    code = kind if kind in ("unsupported_parameter", "unsupported_value") else None
    return InvalidRequestError(f"{param}: {message}" if param else message, param=param, code=code)


_TYPE_NAMES = {
    "str",
    "int",
    "float",
    "bool",
    "list",
    "dict",
    "function-after",
    "none",
    "constrained-int",
    "constrained-str",
    "constrained-float",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LmaasError)
    async def _lmaas(request: Request, exc: LmaasError) -> JSONResponse:
        request.state.error = exc.message  # for the request record
        return _response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = validation_error(exc)
        request.state.error = error.message
        return _response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error: LmaasError = NotFoundError("no such route", code="not_found")
        elif exc.status_code == 405:
            error = MethodNotAllowedError("method not allowed for this route")
        else:
            error = InvalidRequestError(str(exc.detail))
            error.status_code = exc.status_code
        return _response(error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _response(InternalError("internal server error"))
