"""Routes for the gateway's own cluster, not for clients: a model blob for a replica on another
node (``GET /internal/blobs/{hex}``), and for a job runner actor on another node the blob of
an input file and the storing of an output file (``POST /internal/files``).

Mounted only when the cluster kind fetches models over the network (``ray``). The caller must
present the cluster's token (``Authorization: Bearer``), made at start and given only to the
cluster's actors, and gets only blobs of models the cluster serves; or the secret of a job
runner actor's current run (:class:`lmaas.gateway.runner_access.RunnerAccess`), and gets only
blobs of active jobs' input files. The digest in the path is checked to be 64 lowercase hex
characters before anything else reads it, and the file path is the blob store's, rebuilt from
that hex.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread
from fastapi import APIRouter, Request
from starlette.responses import FileResponse, JSONResponse

from lmaas.errors import AuthenticationError, InvalidRequestError, NotFoundError
from lmaas.gateway.runner_access import RunnerAccess
from lmaas.jobs.storage import OUTPUT_PURPOSES
from lmaas.store.streams import AsyncStreamReader

router = APIRouter(include_in_schema=False)

_HEX = re.compile(r"[0-9a-f]{64}")


class BlobSource(Protocol):
    """What the blob route asks of the cluster (``RayCluster`` is one)."""

    def token_ok(self, token: str) -> bool:
        """Whether ``token`` is the cluster's."""

    def blob_path(self, hexdigest: str) -> Path | None:
        """The blob's file when the cluster serves it (None: not one of its models' blobs)."""


_CHUNK = 1 << 20
_NO_LIMIT = 1 << 50


def _token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


@router.get("/internal/blobs/{digest}")
async def blob(digest: str, request: Request) -> FileResponse:
    sources: list[Any] = [
        getattr(request.app.state, "blob_source", None),
        getattr(request.app.state, "runner_access", None),
    ]
    if not any(sources):
        raise NotFoundError("this server has no cluster blob route")
    token = _token(request)
    source = next((s for s in sources if s is not None and token and s.token_ok(token)), None)
    if source is None:
        raise AuthenticationError("the cluster's token is needed here", code="invalid_api_key")
    if _HEX.fullmatch(digest) is None:
        raise InvalidRequestError(
            "a blob is named by 64 lowercase hex characters", param="digest", code="invalid_digest"
        )
    path = await anyio.to_thread.run_sync(source.blob_path, digest)
    if path is None:
        raise NotFoundError(f"no blob sha256:{digest} served here", code="blob_not_found")
    return FileResponse(path, media_type="application/octet-stream")


@router.post("/internal/files")
async def output_file(
    request: Request, purpose: str, filename: str, owner: str = ""
) -> JSONResponse:
    """Store the body as a file a job runner actor made (``purpose``, ``filename``, owned by
    the key ``owner``, empty for an open server's jobs); ``{"id"}``, 201."""
    access: RunnerAccess | None = getattr(request.app.state, "runner_access", None)
    token = _token(request)
    if access is None or not token or not access.token_ok(token):
        raise AuthenticationError("a job runner's secret is needed here", code="invalid_api_key")
    if purpose not in OUTPUT_PURPOSES:
        raise InvalidRequestError(f"a runner stores no {purpose[:32]!r} file", param="purpose")
    reader = AsyncStreamReader(request.stream(), asyncio.get_running_loop(), _NO_LIMIT)

    def chunks() -> Iterator[bytes]:
        yield from iter(partial(reader.read, _CHUNK), b"")

    file_id = await asyncio.to_thread(
        access.add_output, chunks(), purpose=purpose, filename=filename, owner=owner or None
    )
    return JSONResponse({"id": file_id}, status_code=201)
