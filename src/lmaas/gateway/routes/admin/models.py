"""/admin/models: the model store over HTTP (admin key required on every route)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, status
from starlette.responses import FileResponse, Response, StreamingResponse

from lmaas.gateway.deps import AdminKey, ModelManagementDep
from lmaas.gateway.management.models import VersionContent
from lmaas.gateway.routes.uploads import request_body
from lmaas.protocol.admin import (
    MAX_VERSION_NUMBER,
    AliasBody,
    CreateModelBody,
    ImportBody,
    ModelListOut,
    ModelOut,
    VersionOut,
)

router = APIRouter(prefix="/admin/models", tags=["admin: models"])

NO_CONTENT = status.HTTP_204_NO_CONTENT


@router.get("", response_model=ModelListOut)
async def list_models(models: ModelManagementDep, _: AdminKey) -> ModelListOut:
    return await models.list_models()


@router.post("", response_model=ModelOut, status_code=status.HTTP_201_CREATED)
async def create_model(body: CreateModelBody, models: ModelManagementDep, _: AdminKey) -> ModelOut:
    return await models.create_model(body)


@router.get("/{name}", response_model=ModelOut)
async def show_model(name: str, models: ModelManagementDep, _: AdminKey) -> ModelOut:
    return await models.show_model(name)


@router.delete("/{name}", status_code=NO_CONTENT)
async def delete_model(name: str, models: ModelManagementDep, _: AdminKey) -> Response:
    """Every version goes; refused (409) while one is served."""
    await models.delete_model(name)
    return Response(status_code=NO_CONTENT)


@router.post("/{name}/versions", response_model=VersionOut, status_code=201)
async def upload_version(
    name: str,
    request: Request,
    models: ModelManagementDep,
    _: AdminKey,
    x_description: Annotated[str, Header(max_length=4096)] = "",
) -> VersionOut:
    """Upload a new version, streamed to disk and size-capped: a GGUF file as the raw body
    (``application/octet-stream``), or a Hugging Face folder as a tar (``application/x-tar``),
    gzip-compressed tar (``application/gzip``) or zip (``application/zip``) archive, or as
    ``multipart/form-data`` parts whose filenames are their paths in the folder."""
    content_type = request.headers.get("content-type") or ""
    return await models.upload(name, content_type, request_body(request), x_description)


@router.post("/{name}/import", response_model=VersionOut, status_code=201)
async def import_version(
    name: str, body: ImportBody, models: ModelManagementDep, _: AdminKey
) -> VersionOut:
    return await models.import_version(name, body)


@router.get("/{name}/versions/{ref}", response_model=VersionOut)
async def show_version(name: str, ref: str, models: ModelManagementDep, _: AdminKey) -> VersionOut:
    return await models.show_version(name, ref)


@router.get("/{name}/versions/{ref}/content", response_model=None)
async def download_version(
    name: str, ref: str, models: ModelManagementDep, _: AdminKey
) -> FileResponse | StreamingResponse:
    """A GGUF version's file, with HTTP Range requests (resumable downloads); a Hugging Face
    version as a tar of its folder, generated as it is sent."""
    return _content_response(await models.content(name, ref))


def _content_response(content: VersionContent) -> FileResponse | StreamingResponse:
    version = content.version
    if content.file is not None:
        return FileResponse(
            content.file,
            media_type="application/octet-stream",
            filename=f"{version.model}-v{version.number}.gguf",
            headers={"X-Digest": version.digest},
        )
    assert content.tar_chunks is not None
    filename = f"{version.model}-v{version.number}.tar"
    return StreamingResponse(
        content.tar_chunks,
        media_type="application/x-tar",
        headers={
            "Content-Length": str(content.tar_length),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Digest": version.digest,
        },
    )


@router.delete("/{name}/versions/{number}", status_code=NO_CONTENT)
async def delete_version(
    name: str,
    number: Annotated[int, Path(le=MAX_VERSION_NUMBER)],
    models: ModelManagementDep,
    _: AdminKey,
) -> Response:
    """Refused (409) while the version is served."""
    await models.delete_version(name, number)
    return Response(status_code=NO_CONTENT)


@router.put("/{name}/aliases/{alias}", response_model=VersionOut)
async def set_alias(
    name: str, alias: str, body: AliasBody, models: ModelManagementDep, _: AdminKey
) -> VersionOut:
    return await models.set_alias(name, alias, body)


@router.delete("/{name}/aliases/{alias}", status_code=NO_CONTENT)
async def delete_alias(name: str, alias: str, models: ModelManagementDep, _: AdminKey) -> Response:
    await models.delete_alias(name, alias)
    return Response(status_code=NO_CONTENT)
