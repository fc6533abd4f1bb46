"""The model store as the admin API uses it: each method is one ``/admin/models`` operation.

Catalog and disk work runs off the event loop. A change that can move an alias (an upload, an
import, an alias set or deleted, a version or model deleted) tells the deployment manager once
it succeeded, so deployments that follow an alias of the model roll forward.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from lmaas.errors import ConflictError, InvalidRequestError, UnsupportedMediaTypeError
from lmaas.protocol.admin import (
    AliasBody,
    CreateModelBody,
    ImportBody,
    ModelListOut,
    ModelOut,
    VersionEvaluation,
    VersionOut,
)
from lmaas.protocol.deploy import DeploymentControl
from lmaas.store.catalog import StoredModel, VersionInfo, parse_reference
from lmaas.store.evaluations import Evaluations
from lmaas.store.model_store import ArchiveKind, ModelStore

ServedVersions = Callable[[], set[tuple[str, int]]]

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


def version_out(v: VersionInfo) -> VersionOut:
    fields: dict[str, Any] = {
        k: getattr(v, k)
        for k in VersionOut.model_fields
        if k not in ("object", "aliases", "evaluations")
    }
    return VersionOut(**fields, aliases=list(v.aliases))


def model_out(m: StoredModel, versions: list[VersionInfo] | None = None) -> ModelOut:
    return ModelOut(
        name=m.name,
        description=m.description,
        created_at=m.created_at,
        latest=m.latest,
        aliases=dict(m.aliases),
        versions=[version_out(v) for v in versions] if versions is not None else None,
    )


def upload_kind(content_type: str) -> tuple[ArchiveKind | None, str]:
    """(archive kind, or ``None`` for a raw GGUF body; multipart boundary) of a Content-Type."""
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


@dataclass(frozen=True)
class VersionContent:
    """What a download sends: a GGUF version's ``file`` (Range requests work on it), or a
    Hugging Face version as a tar of ``tar_length`` bytes generated as ``tar_chunks`` is read."""

    version: VersionInfo
    file: Path | None = None
    tar_length: int = 0
    tar_chunks: Iterator[bytes] | None = None


class ModelManagement:
    """The ``/admin/models`` operations over one :class:`ModelStore`; kept on ``app.state``."""

    def __init__(
        self,
        store: ModelStore,
        *,
        deployments: DeploymentControl | None,
        served_versions: ServedVersions,
        evaluations: Evaluations | None = None,
    ) -> None:
        self._store = store
        self._deployments = deployments
        self._served_versions = served_versions
        self._evaluations = evaluations

    async def list_models(self) -> ModelListOut:
        models = await asyncio.to_thread(self._store.catalog.list_models)
        return ModelListOut(data=[model_out(m) for m in models])

    async def create_model(self, body: CreateModelBody) -> ModelOut:
        model = await asyncio.to_thread(
            self._store.catalog.create_model, body.name, body.description
        )
        return model_out(model, [])

    async def show_model(self, name: str) -> ModelOut:
        model = await asyncio.to_thread(self._store.catalog.get_model, name)
        versions = await asyncio.to_thread(self._store.catalog.list_versions, name)
        return model_out(model, versions)

    async def delete_model(self, name: str) -> None:
        """Refused (409) while any of its versions is served."""
        versions = await asyncio.to_thread(self._store.catalog.list_versions, name)
        self._refuse_if_served(versions)
        await asyncio.to_thread(self._store.delete_model, name)
        await self._aliases_changed(name)

    async def upload(
        self, name: str, content_type: str, body: AsyncIterable[bytes], description: str = ""
    ) -> VersionOut:
        """A new version from a streamed body: a raw GGUF file, or a Hugging Face folder as a
        tar, gzip-compressed tar, zip or multipart body, as ``content_type`` says."""
        kind, boundary = upload_kind(content_type)
        if kind is None:
            version = await self._store.upload(name, body, source="upload", description=description)
        else:
            version = await self._store.upload_folder(
                name,
                body,
                kind,
                boundary=boundary,
                source=f"upload:{kind}",
                description=description,
            )
        await self._aliases_changed(name)
        return version_out(version)

    async def import_version(self, name: str, body: ImportBody) -> VersionOut:
        """A new version from the server's own disk, or a shipped model under its own name."""
        if (body.path is None) == (body.package is None):
            raise InvalidRequestError("give exactly one of `path` or `package`", param="path")
        if body.package is not None:
            if body.package != name:
                raise InvalidRequestError(
                    "a shipped model is imported under its own name", param="package"
                )
            version = await asyncio.to_thread(self._store.import_shipped, body.package)
        else:
            assert body.path is not None
            version = await asyncio.to_thread(
                self._store.import_path, name, Path(body.path), description=body.description
            )
        await self._aliases_changed(name)
        return version_out(version)

    async def show_version(self, name: str, ref: str) -> VersionOut:
        """Any version, a broken one included (its ``state`` and ``error`` say so), with the
        eval runs that evaluated it."""
        version = await self._version(name, ref, broken_ok=True)
        out = version_out(version)
        if self._evaluations is not None:
            found = await asyncio.to_thread(
                self._evaluations.of_version, version.model, version.number
            )
            out.evaluations = [
                VersionEvaluation(
                    run_id=e.run_id,
                    eval_id=e.eval_id,
                    eval_name=e.eval_name,
                    created_at=e.created_at,
                    result_counts=e.results.get("result_counts", {}),
                    per_testing_criteria_results=e.results.get("per_testing_criteria_results", []),
                )
                for e in found
            ]
        return out

    async def content(self, name: str, ref: str) -> VersionContent:
        """Refused (409) for a broken version: its bytes are not all there."""
        version = await self._version(name, ref)
        if version.format == "hf":
            length, chunks = await asyncio.to_thread(self._store.folder_tar, version)
            return VersionContent(version, tar_length=length, tar_chunks=chunks)
        return VersionContent(version, file=self._store.path_of(version))

    async def delete_version(self, name: str, number: int) -> None:
        """Refused (409) while the version is served."""
        version = await asyncio.to_thread(
            partial(self._store.catalog.get_version, name, number, broken_ok=True)
        )
        self._refuse_if_served([version])
        await asyncio.to_thread(self._store.delete_version, name, number)
        await self._aliases_changed(name)

    async def set_alias(self, name: str, alias: str, body: AliasBody) -> VersionOut:
        # The catalog reads "3" as version 3 (and "²" or 20 digits as a bad alias name).
        ref = body.version
        version = await asyncio.to_thread(self._store.catalog.set_alias, name, alias, ref)
        await self._aliases_changed(name)
        return version_out(version)

    async def delete_alias(self, name: str, alias: str) -> None:
        await asyncio.to_thread(self._store.catalog.delete_alias, name, alias)
        await self._aliases_changed(name)

    async def _version(self, name: str, ref: str, *, broken_ok: bool = False) -> VersionInfo:
        parsed = parse_reference(f"{name}:{ref}")[1]
        get = partial(self._store.catalog.get_version, name, parsed, broken_ok=broken_ok)
        return await asyncio.to_thread(get)

    def _refuse_if_served(self, versions: list[VersionInfo]) -> None:
        served = self._served_versions()
        for v in versions:
            if (v.model, v.number) in served:
                raise ConflictError(
                    f"{v.model} version {v.number} is being served; undeploy it first",
                    param="version",
                )

    async def _aliases_changed(self, name: str) -> None:
        if self._deployments is not None:
            await self._deployments.on_aliases_changed(name)
