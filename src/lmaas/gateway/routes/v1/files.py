"""/v1/files: OpenAI's Files API (any active key; a key sees only its own files unless it is
an admin key)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from starlette.responses import StreamingResponse

from lmaas.gateway.deps import FileManagementDep, InferenceKey
from lmaas.gateway.routes.uploads import request_body
from lmaas.protocol.files import FileDeleted, FileList, FileObject
from lmaas.store.files import MAX_LIST_LIMIT

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FileObject)
async def upload_file(request: Request, files: FileManagementDep, key: InferenceKey) -> FileObject:
    """``multipart/form-data`` with ``file`` and ``purpose`` (batch, fine-tune, evals or
    user_data); streamed to the blob store, JSONL checked for its purpose."""
    headers = request.headers
    content_type = headers.get("content-type") or ""
    return await files.upload(
        key, content_type, headers.get("content-length"), request_body(request)
    )


@router.get("", response_model=FileList)
async def list_files(
    files: FileManagementDep,
    key: InferenceKey,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = MAX_LIST_LIMIT,
    order: Literal["asc", "desc"] = "desc",
    purpose: Annotated[str | None, Query(max_length=32)] = None,
) -> FileList:
    return await files.list(key, after=after, limit=limit, order=order, purpose=purpose)


@router.get("/{file_id}", response_model=FileObject)
async def retrieve_file(file_id: str, files: FileManagementDep, key: InferenceKey) -> FileObject:
    return await files.retrieve(key, file_id)


@router.get("/{file_id}/content", response_model=None)
async def file_content(
    file_id: str, files: FileManagementDep, key: InferenceKey
) -> StreamingResponse:
    content = await files.content(key, file_id)
    disposition = f"attachment; filename*=utf-8''{quote(content.file.filename, safe='')}"
    return StreamingResponse(
        content.chunks(),
        media_type="application/octet-stream",
        headers={"Content-Length": str(content.file.bytes), "Content-Disposition": disposition},
    )


@router.delete("/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, files: FileManagementDep, key: InferenceKey) -> FileDeleted:
    """Refused (409) while a job uses the file."""
    return await files.delete(key, file_id)
