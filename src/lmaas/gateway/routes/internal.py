"""Routes for the gateway's own cluster, not for clients: a model blob for a replica on another
node (``GET /internal/blobs/{hex}``).

Mounted only when the cluster kind fetches models over the network (``ray``). The caller must
present the cluster's token (``Authorization: Bearer``), made at start and given only to the
cluster's actors; it gets only blobs of models the cluster serves. The digest in the path is
checked to be 64 lowercase hex characters before anything else reads it, and the file path is
the blob store's, rebuilt from that hex.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from fastapi import APIRouter, Request
from starlette.responses import FileResponse

from lmaas.errors import AuthenticationError, InvalidRequestError, NotFoundError

router = APIRouter(include_in_schema=False)

_HEX = re.compile(r"[0-9a-f]{64}")


class BlobSource(Protocol):
    """What the blob route asks of the cluster (``RayCluster`` is one)."""

    def token_ok(self, token: str) -> bool:
        """Whether ``token`` is the cluster's."""

    def blob_path(self, hexdigest: str) -> Path | None:
        """The blob's file when the cluster serves it (None: not one of its models' blobs)."""


@router.get("/internal/blobs/{digest}")
async def blob(digest: str, request: Request) -> FileResponse:
    source: BlobSource | None = getattr(request.app.state, "blob_source", None)
    if source is None:
        raise NotFoundError("this server has no cluster blob route")
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or not source.token_ok(token.strip()):
        raise AuthenticationError("the cluster's token is needed here", code="invalid_api_key")
    if _HEX.fullmatch(digest) is None:
        raise InvalidRequestError(
            "a blob is named by 64 lowercase hex characters", param="digest", code="invalid_digest"
        )
    path = source.blob_path(digest)
    if path is None:
        raise NotFoundError(f"no blob sha256:{digest} of a served model", code="blob_not_found")
    return FileResponse(path, media_type="application/octet-stream")
