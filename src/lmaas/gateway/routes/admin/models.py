"""/admin/models: the model store over HTTP (admin key required on every route)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect
from starlette.responses import FileResponse, Response, StreamingResponse

from lmaas.errors import ConflictError, InvalidRequestError, UnsupportedMediaTypeError
from lmaas.gateway.auth import AdminKey
from lmaas.store.catalog import StoredModel, VersionInfo, parse_reference
from lmaas.store.model_store import ArchiveKind, ModelStore


async def _follow_aliases(request: Request) -> AsyncIterator[None]:
    """After a successful change to a model (upload, import, alias moved or deleted, version
    deleted: each can move an alias), deployments that follow its aliases roll forward."""
    yield
    name = request.path_params.get("name")
    deployments = getattr(request.app.state, "deployments", None)
    if request.method != "GET" and name and deployments is not None:
        await deployments.on_aliases_changed(name)


router = APIRouter(
    prefix="/admin/models", tags=["admin: models"], dependencies=[Depends(_follow_aliases)]
)


async def _store(request: Request) -> ModelStore:
    return request.app.state.store  # type: ignore[no-any-return]


StoreDep = Annotated[ModelStore, Depends(_store)]


class CreateModelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: Annotated[str, Field(max_length=4096)] = ""


class ImportBody(BaseModel):
    """Import from the server's own disk (`path`) or from an installed model package."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = None
    package: str | None = None
    description: Annotated[str, Field(max_length=4096)] = ""


class AliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | str


class VersionOut(BaseModel):
    object: Literal["model.version"] = "model.version"
    model: str
    number: int
    format: str
    architecture: str | None
    parameter_count: int | None
    context_length: int | None
    quantization: str | None
    size_bytes: int
    digest: str
    source: str
    description: str
    created_at: datetime
    state: str
    aliases: list[str]

    @classmethod
    def of(cls, v: VersionInfo) -> VersionOut:
        fields: dict[str, Any] = {
            k: getattr(v, k) for k in cls.model_fields if k not in ("object", "aliases")
        }
        return cls(**fields, aliases=list(v.aliases))


class ModelOut(BaseModel):
    object: Literal["model.entry"] = "model.entry"
    name: str
    description: str
    created_at: datetime
    latest: int | None
    aliases: dict[str, int]
    versions: list[VersionOut] | None = None

    @classmethod
    def of(cls, m: StoredModel, versions: list[VersionInfo] | None = None) -> ModelOut:
        return cls(
            name=m.name,
            description=m.description,
            created_at=m.created_at,
            latest=m.latest,
            aliases=dict(m.aliases),
            versions=[VersionOut.of(v) for v in versions] if versions is not None else None,
        )


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


async def _served(request: Request) -> set[tuple[str, int]]:
    """The (model, version) pairs deployments serve now (refused for deletion)."""
    return request.app.state.served_versions()  # type: ignore[no-any-return]


ServedDep = Annotated[set[tuple[str, int]], Depends(_served)]


def _refuse_if_served(served: set[tuple[str, int]], versions: list[VersionInfo]) -> None:
    for v in versions:
        if (v.model, v.number) in served:
            raise ConflictError(
                f"{v.model} version {v.number} is being served; undeploy it first",
                param="version",
            )


@router.get("", response_model=ModelListOut)
async def list_models(store: StoreDep, _: AdminKey) -> ModelListOut:
    models = await asyncio.to_thread(store.catalog.list_models)
    return ModelListOut(data=[ModelOut.of(m) for m in models])


@router.post("", response_model=ModelOut, status_code=status.HTTP_201_CREATED)
async def create_model(body: CreateModelBody, store: StoreDep, _: AdminKey) -> ModelOut:
    model = await asyncio.to_thread(store.catalog.create_model, body.name, body.description)
    return ModelOut.of(model, [])


@router.get("/{name}", response_model=ModelOut)
async def show_model(name: str, store: StoreDep, _: AdminKey) -> ModelOut:
    model = await asyncio.to_thread(store.catalog.get_model, name)
    versions = await asyncio.to_thread(store.catalog.list_versions, name)
    return ModelOut.of(model, versions)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_model(name: str, store: StoreDep, served: ServedDep, _: AdminKey) -> Response:
    versions = await asyncio.to_thread(store.catalog.list_versions, name)
    _refuse_if_served(served, versions)
    await asyncio.to_thread(store.delete_model, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_ARCHIVE_TYPES: dict[str, ArchiveKind] = {
    "application/x-tar": "tar",
    "application/tar": "tar",
    "application/gzip": "tar",
    "application/x-gzip": "tar",
    "application/x-gtar": "tar",
    "application/zip": "zip",
    "application/x-zip-compressed": "zip",
    "multipart/form-data": "multipart",
}


def _upload_kind(content_type: str) -> tuple[ArchiveKind | None, str]:
    """(archive kind or None for a raw GGUF body, multipart boundary) of a Content-Type."""
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media in ("application/octet-stream", ""):
        return None, ""
    kind = _ARCHIVE_TYPES.get(media)
    if kind is None:
        raise UnsupportedMediaTypeError(
            "send a GGUF file as application/octet-stream, or a Hugging Face folder as "
            "application/x-tar, application/gzip, application/zip or multipart/form-data",
            param="Content-Type",
        )
    boundary = ""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
    if kind == "multipart" and not 1 <= len(boundary) <= 70:
        raise InvalidRequestError("multipart/form-data needs a boundary", param="Content-Type")
    return kind, boundary


async def _body(request: Request) -> AsyncIterator[bytes]:
    """The request body; a client that goes away mid-upload is a 400, not a server error."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise InvalidRequestError(
            "the upload was interrupted: the client disconnected", code="upload_interrupted"
        ) from None


@router.post("/{name}/versions", response_model=VersionOut, status_code=201)
async def upload_version(
    name: str,
    request: Request,
    store: StoreDep,
    _: AdminKey,
    x_description: Annotated[str, Header(max_length=4096)] = "",
) -> VersionOut:
    """Upload a new version, streamed to disk and size-capped: a GGUF file as the raw body
    (``application/octet-stream``), or a Hugging Face folder as a tar (``application/x-tar``),
    gzip-compressed tar (``application/gzip``) or zip (``application/zip``) archive, or as
    ``multipart/form-data`` parts whose filenames are their paths in the folder."""
    kind, boundary = _upload_kind(request.headers.get("content-type") or "")
    if kind is None:
        version = await store.upload(
            name, _body(request), source="upload", description=x_description
        )
    else:
        version = await store.upload_folder(
            name,
            _body(request),
            kind,
            boundary=boundary,
            source=f"upload:{kind}",
            description=x_description,
        )
    return VersionOut.of(version)


@router.post("/{name}/import", response_model=VersionOut, status_code=201)
async def import_version(name: str, body: ImportBody, store: StoreDep, _: AdminKey) -> VersionOut:
    from pathlib import Path

    if (body.path is None) == (body.package is None):
        raise InvalidRequestError("give exactly one of `path` or `package`", param="path")
    if body.package is not None:
        if body.package != name:
            raise InvalidRequestError(
                "a shipped model is imported under its own name", param="package"
            )
        version = await asyncio.to_thread(store.import_shipped, body.package)
    else:
        assert body.path is not None
        version = await asyncio.to_thread(
            store.import_path, name, Path(body.path), description=body.description
        )
    return VersionOut.of(version)


@router.get("/{name}/versions/{ref}", response_model=VersionOut)
async def show_version(name: str, ref: str, store: StoreDep, _: AdminKey) -> VersionOut:
    parsed = parse_reference(f"{name}:{ref}")[1]
    return VersionOut.of(await asyncio.to_thread(store.catalog.get_version, name, parsed))


@router.get("/{name}/versions/{ref}/content", response_model=None)
async def download_version(
    name: str, ref: str, store: StoreDep, _: AdminKey
) -> FileResponse | StreamingResponse:
    """A GGUF version's file, with HTTP Range requests (resumable downloads); a Hugging Face
    version as a tar of its folder, generated as it is sent."""
    parsed = parse_reference(f"{name}:{ref}")[1]
    version = await asyncio.to_thread(store.catalog.get_version, name, parsed)
    if version.format == "hf":
        length, chunks = await asyncio.to_thread(store.folder_tar, version)
        filename = f"{version.model}-v{version.number}.tar"
        return StreamingResponse(
            chunks,
            media_type="application/x-tar",
            headers={
                "Content-Length": str(length),
                "Content-Disposition": f'attachment; filename="{filename}"',
                "X-Digest": version.digest,
            },
        )
    return FileResponse(
        store.path_of(version),
        media_type="application/octet-stream",
        filename=f"{version.model}-v{version.number}.gguf",
        headers={"X-Digest": version.digest},
    )


@router.delete("/{name}/versions/{number}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_version(
    name: str, number: int, store: StoreDep, served: ServedDep, _: AdminKey
) -> Response:
    version = await asyncio.to_thread(store.catalog.get_version, name, number)
    _refuse_if_served(served, [version])
    await asyncio.to_thread(store.delete_version, name, number)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/{name}/aliases/{alias}", response_model=VersionOut)
async def set_alias(
    name: str, alias: str, body: AliasBody, store: StoreDep, _: AdminKey
) -> VersionOut:
    ref: int | str = body.version
    if isinstance(ref, str) and ref.isdigit():
        ref = int(ref)
    return VersionOut.of(await asyncio.to_thread(store.catalog.set_alias, name, alias, ref))


@router.delete("/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_alias(name: str, alias: str, store: StoreDep, _: AdminKey) -> Response:
    await asyncio.to_thread(store.catalog.delete_alias, name, alias)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
