"""Routes for the gateway's own cluster, not for clients: a model blob for a replica on another
node (``GET /internal/blobs/{hex}``), and for a job runner actor on another node the blob of
an input file or of a source model version, the storing of an output file (``POST
/internal/files``) and of a new model version its job made (``POST /internal/versions``), and
a fine-tune's newest training checkpoint, kept (``POST /internal/checkpoints``) and read back
(``GET /internal/checkpoints``).

Mounted only when the cluster kind fetches models over the network (``ray``). The caller must
present the cluster's token (``Authorization: Bearer``), made at start and given only to the
cluster's actors, and gets only blobs of models the cluster serves; or the secret of a job
runner actor's current run (:class:`lmaas.gateway.runner_access.RunnerAccess`), and gets only
blobs of the inputs of the jobs it holds and stores only what those jobs make. The digest in
the path is checked to be 64 lowercase hex characters before anything else reads it, and the
file path is the blob store's, rebuilt from that hex.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Literal, Protocol

import anyio.to_thread
from fastapi import APIRouter, Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse

from lmaas.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    RequestTooLargeError,
)
from lmaas.gateway.runner_access import RunnerAccess
from lmaas.jobs.storage import (
    CHECKPOINT_STEP_HEADER,
    CHECKPOINTS_ROUTE,
    FILES_ROUTE,
    OUTPUT_PURPOSES,
    VERSIONS_ROUTE,
)
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


def _token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _runner(request: Request) -> tuple[RunnerAccess, str]:
    """The runner access rules and the runner whose secret the request bears (401 without)."""
    access: RunnerAccess | None = getattr(request.app.state, "runner_access", None)
    token = _token(request)
    runner = access.runner_of(token) if access is not None and token else None
    if access is None or runner is None:
        raise AuthenticationError("a job runner's secret is needed here", code="invalid_api_key")
    return access, runner


@router.get("/internal/blobs/{digest}")
async def blob(digest: str, request: Request) -> FileResponse:
    cluster: BlobSource | None = getattr(request.app.state, "blob_source", None)
    access: RunnerAccess | None = getattr(request.app.state, "runner_access", None)
    if cluster is None and access is None:
        raise NotFoundError("this server has no cluster blob route")
    token = _token(request)
    find: Callable[[str], Path | None] | None = None
    if token and cluster is not None and cluster.token_ok(token):
        find = cluster.blob_path
    elif token and access is not None and (runner := access.runner_of(token)) is not None:
        find = partial(access.blob_path, runner=runner)
    if find is None:
        raise AuthenticationError("the cluster's token is needed here", code="invalid_api_key")
    if _HEX.fullmatch(digest) is None:
        raise InvalidRequestError(
            "a blob is named by 64 lowercase hex characters", param="digest", code="invalid_digest"
        )
    path = await anyio.to_thread.run_sync(find, digest)
    if path is None:
        raise NotFoundError(f"no blob sha256:{digest} served here", code="blob_not_found")
    return FileResponse(path, media_type="application/octet-stream")


@router.post(FILES_ROUTE)
async def output_file(request: Request, job: str, purpose: str, filename: str) -> JSONResponse:
    """Store the body as a file job ``job``, which the caller's runner holds, made
    (``purpose``, ``filename``), owned by the job's owner and at most ``files.max_bytes``
    (413 beyond); ``{"id"}``, 201."""
    access, runner = _runner(request)
    if purpose not in OUTPUT_PURPOSES:
        raise InvalidRequestError(f"a runner stores no {purpose[:32]!r} file", param="purpose")
    held = await asyncio.to_thread(access.held_job, runner, job)
    limit = access.max_file_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    reader = AsyncStreamReader(request.stream(), asyncio.get_running_loop(), limit)

    def chunks() -> Iterator[bytes]:
        yield from iter(partial(reader.read, _CHUNK), b"")

    try:
        file_id = await asyncio.to_thread(
            access.add_output, chunks(), job=held, purpose=purpose, filename=filename
        )
    except RequestTooLargeError:
        raise _too_large(limit) from None
    return JSONResponse({"id": file_id}, status_code=201)


def _too_large(limit: int, what: str = "file") -> RequestTooLargeError:
    """413 for an output file (``files.max_bytes``) or a checkpoint
    (``jobs.ray.max_checkpoint_bytes``) over its limit."""
    setting = "files.max_bytes" if what == "file" else "jobs.ray.max_checkpoint_bytes"
    article = "an output file" if what == "file" else "a checkpoint"
    return RequestTooLargeError(
        f"{article} may hold at most {limit} bytes ({setting})",
        param=what,
        code=f"{what}_too_large",
    )


@router.post(VERSIONS_ROUTE)
async def new_version(
    request: Request,
    job: str,
    model: str,
    format: Literal["gguf", "hf"],
    sha256: str,
    source: str,
    description: str = "",
    moves_latest: bool = True,
) -> JSONResponse:
    """Store the body (a GGUF file, or a Hugging Face folder as a tar) as a new version of
    ``model`` made by job ``job``, which the caller's runner holds, when it hashes to ``sha256``
    (see :mod:`lmaas.gateway.runner_access`); ``{"model", "number"}``, 201."""
    access, runner = _runner(request)
    if _HEX.fullmatch(sha256) is None:
        raise InvalidRequestError(
            "sha256 is 64 lowercase hex characters", param="sha256", code="invalid_digest"
        )
    await asyncio.to_thread(access.version_job, runner, job, model, source)
    version = await access.store_version(
        model,
        request.stream(),
        fmt=format,
        sha256=sha256,
        source=source,
        description=description,
        moves_latest=moves_latest,
        still_held=partial(access.version_job, runner, job, model, source),
    )
    return JSONResponse({"model": version.model, "number": version.number}, status_code=201)


@router.post(CHECKPOINTS_ROUTE)
async def keep_checkpoint(request: Request, job: str) -> JSONResponse:
    """Keep the body, a checkpoint archive (see :mod:`lmaas.jobs.checkpoint_archive`), as the
    newest checkpoint of fine-tune ``job``, which the caller's runner holds; it replaces the
    one kept before. ``{"job", "step", "bytes"}``, 201."""
    access, runner = _runner(request)
    kept_here = access.checkpoints
    held = await asyncio.to_thread(access.checkpoint_job, runner, job)
    limit = access.max_checkpoint_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, "checkpoint")
    reader = AsyncStreamReader(request.stream(), asyncio.get_running_loop(), limit)
    try:
        kept = await asyncio.to_thread(
            kept_here.put,
            held,
            reader,
            max_bytes=limit,
            still_held=partial(access.checkpoint_job, runner, job),
        )
    except RequestTooLargeError:
        raise _too_large(limit, "checkpoint") from None
    body = {"job": held.id, "step": kept.step, "bytes": kept.file.bytes}
    return JSONResponse(body, status_code=201)


@router.get(CHECKPOINTS_ROUTE)
async def read_checkpoint(
    request: Request, job: str, after: int | None = None
) -> StreamingResponse:
    """The archive of the checkpoint fine-tune ``job`` (which the caller's runner holds) keeps
    here, its step in the ``X-Lmaas-Checkpoint-Step`` header; 404 when it keeps none (of a step
    past ``after``)."""
    access, runner = _runner(request)
    kept_here = access.checkpoints
    held = await asyncio.to_thread(access.checkpoint_job, runner, job)
    kept = await asyncio.to_thread(kept_here.newest, held.id)
    if kept is None or (after is not None and kept.step <= after):
        past = "" if after is None else f" past step {after}"
        raise NotFoundError(
            f"job {held.id} keeps no checkpoint here{past}", code="checkpoint_not_found"
        )
    handle = await asyncio.to_thread(kept_here.open, kept)

    def chunks() -> Iterator[bytes]:
        with handle:
            yield from iter(partial(handle.read, _CHUNK), b"")

    headers = {"Content-Length": str(kept.file.bytes), CHECKPOINT_STEP_HEADER: str(kept.step)}
    return StreamingResponse(chunks(), media_type="application/x-tar", headers=headers)
