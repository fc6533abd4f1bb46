"""What upload routes share: the request body as a stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request

from lmaas.errors import InvalidRequestError


async def request_body(request: Request) -> AsyncIterator[bytes]:
    """The request body; a client that goes away mid-upload is a 400, not a server error."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise InvalidRequestError(
            "the upload was interrupted: the client disconnected", code="upload_interrupted"
        ) from None
