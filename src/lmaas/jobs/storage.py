"""Where a job runner reads its input files and source models and writes its output files and
new model versions: the seam between the handlers (batch, eval runs, fine-tuning, quantizing)
and the store.

- :class:`LocalJobFiles` is the store itself (the runner beside the gateway shares its disk).
- :class:`GatewayJobFiles` is for a runner on a Ray node with no shared disk: an input file's
  bytes are fetched by sha256 from the gateway (``GET /internal/blobs/<hex>``, with the
  runner's secret) into the node's cache and kept only when they hash to the file's digest
  (:class:`lmaas.store.node_cache.NodeCache`); its row (digest, size) is read from
  the catalog, which such a runner reaches by URL (PostgreSQL). A source model version comes the
  same way, blob by blob (a folder's manifest, then its files, linked into a folder of the
  cache), and stays pinned in the cache (never pruned) for the job that asked for it until
  that job's run ends (:meth:`GatewayJobFiles.end_job`). An output file is streamed to the gateway
  (``POST /internal/files``) with the id of the job that made it, which stores it as that
  job's owner's and answers its id; a new version (a GGUF file, or a Hugging Face folder sent
  as a tar) is streamed to ``POST /internal/versions`` with the sha256 of what is sent, which
  the gateway checks before the version exists, then stores as an admin upload is stored.

A fine-tune's training checkpoints stay in its work directory. Beside the gateway (shared disk)
that is all; through the gateway each checkpoint is also sent, as one plain tar
(:mod:`lmaas.jobs.checkpoint_archive`), to ``POST /internal/checkpoints``, which keeps the
newest one per job; a run on another node that has no newer checkpoint of its own fetches it
back (``GET /internal/checkpoints``) and goes on from it.

Everything here blocks (SQL, disk, HTTP): handlers call it on a thread (``ctx.call``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO, Final, Protocol

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lmaas.errors import InvalidRequestError, NotFoundError
from lmaas.jobs.checkpoint_archive import archive_chunks, archive_length, unpack
from lmaas.store.catalog import VersionInfo
from lmaas.store.files import FileStore, Viewer
from lmaas.store.folder import MAX_MANIFEST_BYTES, parse_manifest, tar_chunks
from lmaas.store.model_store import ModelStore
from lmaas.store.node_cache import NodeCache, Source
from lmaas.store.node_prune import Lease, LeaseReleased
from lmaas.store.tables import FileRow

FILES_ROUTE: Final = "/internal/files"
VERSIONS_ROUTE: Final = "/internal/versions"
CHECKPOINTS_ROUTE: Final = "/internal/checkpoints"
CHECKPOINT_STEP_HEADER: Final = "X-Lmaas-Checkpoint-Step"
# Purposes of the files a runner writes through the gateway (a fine-tune's held-out evals).
OUTPUT_PURPOSES: Final = frozenset({"batch_output", "evals"})
_EVERYONE: Final = Viewer(None, admin=True)
_UPLOAD_TIMEOUT: Final = httpx.Timeout(connect=10.0, read=600.0, write=600.0, pool=60.0)
# How many of the jobs whose runs ended a runner remembers (see GatewayJobFiles._ended).
_ENDED_KEPT: Final = 1024


class JobFiles(Protocol):
    """The files API as a job handler sees it."""

    def open_input(self, file_id: str) -> BinaryIO:
        """The bytes of file ``file_id`` (any owner's), opened for reading (close it)."""

    def add_output(
        self,
        chunks: Iterable[bytes],
        *,
        job_id: str,
        purpose: str,
        filename: str,
        owner_key_id: str | None,
    ) -> str:
        """Store a file job ``job_id`` made, owned by ``owner_key_id`` (the job's owner, which
        the gateway takes from the job itself for a runner on another node); its id."""

    def model_path(self, version: VersionInfo, *, job_id: str | None = None) -> Path:
        """A store version on this machine: its GGUF file or its Hugging Face folder (read it,
        never write it), there for job ``job_id`` until its run ends."""

    def store_version(
        self,
        job_id: str,
        model: str,
        path: Path,
        *,
        source: str,
        description: str = "",
        moves_latest: bool = True,
    ) -> VersionInfo:
        """``path`` (a GGUF file, or a directory: a Hugging Face folder) as a new version of
        ``model``, made by job ``job_id``; without ``moves_latest`` (a GGUF file only),
        ``latest`` stays where it is."""

    def keep_checkpoint(self, job_id: str, folder: Path) -> bool:
        """Keep the checkpoint folder ``folder`` of job ``job_id`` where a run on another node
        finds it: False when nothing needs doing (the work directory is on the store's disk);
        raises :class:`CheckpointRefused` when it was not kept."""

    def fetch_checkpoint(self, job_id: str, directory: Path, *, after: int | None) -> Path | None:
        """The newest checkpoint job ``job_id`` kept elsewhere, when its step is past ``after``,
        unpacked as a checkpoint folder in ``directory``; None when there is none."""


class LocalJobFiles:
    """The store on this machine's disk (the runner beside the gateway)."""

    def __init__(self, files: FileStore, models: ModelStore | None = None) -> None:
        self.files = files
        self.models = models

    def _store(self) -> ModelStore:
        if self.models is None:
            raise RuntimeError("these job files have no model store")
        return self.models

    def model_path(self, version: VersionInfo, *, job_id: str | None = None) -> Path:
        return self._store().path_of(version)  # the store's own: it stays

    def store_version(
        self,
        job_id: str,
        model: str,
        path: Path,
        *,
        source: str,
        description: str = "",
        moves_latest: bool = True,
    ) -> VersionInfo:
        store = self._store()
        if path.is_dir():
            return store.import_folder(model, path, source=source, description=description)
        return store.import_file(
            model, path, source=source, description=description, moves_latest=moves_latest
        )

    def open_input(self, file_id: str) -> BinaryIO:
        return self.files.open(file_id, _EVERYONE)[1]

    def keep_checkpoint(self, job_id: str, folder: Path) -> bool:
        return False  # the next runner beside the gateway finds it in the same work directory

    def fetch_checkpoint(self, job_id: str, directory: Path, *, after: int | None) -> Path | None:
        return None

    def add_output(
        self,
        chunks: Iterable[bytes],
        *,
        job_id: str,
        purpose: str,
        filename: str,
        owner_key_id: str | None,
    ) -> str:
        stored = self.files.add(
            chunks, purpose=purpose, filename=filename, owner_key_id=owner_key_id
        )
        return stored.id


# A file id -> its blob's digest and size, or None for no such file.
FileLookup = Callable[[str], tuple[str, int] | None]


def catalog_lookup(sessions: sessionmaker[Session]) -> FileLookup:
    """A file's digest and size as the catalog has them."""

    def lookup(file_id: str) -> tuple[str, int] | None:
        with sessions.begin() as session:
            row = session.execute(
                select(FileRow.digest, FileRow.bytes).where(FileRow.id == file_id)
            ).first()
        return None if row is None else (row.digest, row.bytes)

    return lookup


# A version by model and number, as the catalog has it.
VersionLookup = Callable[[str, int], VersionInfo]


class GatewayJobFiles:
    """Files through the gateway, for a runner on another node (see the module doc)."""

    def __init__(
        self,
        lookup: FileLookup,
        cache: NodeCache,
        source: Source,
        *,
        versions: VersionLookup | None = None,
        verify: bool = True,
        client: httpx.Client | None = None,
    ) -> None:
        self._lookup = lookup
        self._versions = versions
        self._cache = cache
        self._source = source
        self._http = client or httpx.Client(timeout=_UPLOAD_TIMEOUT, verify=verify)
        # The versions model_path gave a job stay pinned in the node cache until end_job; those
        # given no job until close. A call for a job whose run just ended (a thread its cancelled
        # run left behind) pins nothing: the last jobs that ended are remembered.
        self._jobs: dict[str, Lease] = {}
        self._ended: dict[str, None] = {}  # in the order they ended
        self._jobs_lock = threading.Lock()
        self._unowned = cache.lease()

    def close(self) -> None:
        self._http.close()
        with self._jobs_lock:
            leases = list(self._jobs.values())
            self._jobs.clear()
        for lease in (*leases, self._unowned):
            lease.release()

    def begin_job(self, job_id: str) -> Lease:
        """A run of job ``job_id`` starts: what :meth:`model_path` gives it is pinned in the
        node cache until :meth:`end_job` (given the lease this returns)."""
        lease = self._cache.lease()
        with self._jobs_lock:
            self._jobs[job_id] = lease
            self._ended.pop(job_id, None)
        return lease

    def end_job(self, job_id: str, lease: Lease | None = None) -> None:
        """The run of job ``job_id`` (the one :meth:`begin_job` gave ``lease``; None: its
        current one) ended, however it ended: let the node cache prune what it pinned. A later
        run of the job keeps its own pins."""
        with self._jobs_lock:
            current = self._jobs.get(job_id)
            lease = current if lease is None else lease
            if current is not None and current is lease:
                del self._jobs[job_id]
                self._ended[job_id] = None
                if len(self._ended) > _ENDED_KEPT:
                    del self._ended[next(iter(self._ended))]
        if lease is not None:
            lease.release()

    def _lease_for(self, job_id: str | None) -> Lease:
        if job_id is None:
            return self._unowned
        with self._jobs_lock:
            if job_id in self._ended:
                raise LeaseReleased(f"job {job_id} ended here: nothing more is pinned for it")
            if job_id not in self._jobs:  # a caller outside a runner's loop: until end_job
                self._jobs[job_id] = self._cache.lease()
            return self._jobs[job_id]

    def open_input(self, file_id: str) -> BinaryIO:
        found = self._lookup(file_id)
        if found is None:
            raise NotFoundError(f"no file {file_id[:64]!r}", param="file_id")
        digest, size = found
        with self._cache.lease() as lease:  # open, the file is read even if pruned after
            path = self._cache.ensure_blob(self._source, digest, size, self._http, lease=lease)
            return path.open("rb")

    def add_output(
        self,
        chunks: Iterable[bytes],
        *,
        job_id: str,
        purpose: str,
        filename: str,
        owner_key_id: str | None,
    ) -> str:
        """The gateway stores it for job ``job_id``, which this runner must hold, as its
        owner's (``owner_key_id`` is not sent: the gateway reads it from the job)."""
        response = self._http.post(
            f"{self._source.url.rstrip('/')}{FILES_ROUTE}",
            params={"job": job_id, "purpose": purpose, "filename": filename},
            headers={
                "Authorization": f"Bearer {self._source.token}",
                "Content-Type": "application/octet-stream",
            },
            content=_nonempty(chunks),
        )
        if response.status_code != 201:
            raise OutputRefused(
                f"the gateway refused the output file {filename!r} "
                f"({response.status_code}: {response.text[:300]})"
            )
        return str(response.json()["id"])

    def model_path(self, version: VersionInfo, *, job_id: str | None = None) -> Path:
        """The version's blobs fetched by digest into the node cache (a folder's manifest
        first, then each file it lists), the folder built there from links to them; pinned
        there until job ``job_id``'s run ends (:meth:`end_job`; None: until :meth:`close`)."""
        cache, lease = self._cache, self._lease_for(job_id)
        if version.format != "hf":
            return cache.ensure_blob(
                self._source, version.digest, version.size_bytes, self._http, lease=lease
            )
        manifest = cache.ensure_blob(
            self._source,
            version.digest,
            None,
            self._http,
            max_bytes=MAX_MANIFEST_BYTES,
            lease=lease,
        )
        files = parse_manifest(manifest.read_bytes())
        lease.add(file.digest for file in files)
        for file in files:
            cache.ensure_blob(self._source, file.digest, file.size, self._http, lease=lease)
        return cache.folder(version.digest, files, lease=lease)

    def store_version(
        self,
        job_id: str,
        model: str,
        path: Path,
        *,
        source: str,
        description: str = "",
        moves_latest: bool = True,
    ) -> VersionInfo:
        """Stream the file, or the folder as a tar, to the gateway with its sha256 (read once to
        hash it, once to send it); the version the gateway made, read back from the catalog."""
        if self._versions is None:
            raise RuntimeError("these job files have no catalog to read versions from")
        if path.is_dir():
            fmt, body = "hf", partial(tar_chunks, folder_entries(path))
        else:
            fmt, body = "gguf", partial(_file_chunks, path)
        hasher = hashlib.sha256()
        for chunk in body():
            hasher.update(chunk)
        response = self._http.post(
            f"{self._source.url.rstrip('/')}{VERSIONS_ROUTE}",
            params={
                "job": job_id,
                "model": model,
                "format": fmt,
                "sha256": hasher.hexdigest(),
                "source": source,
                "description": description,
                "moves_latest": "true" if moves_latest else "false",
            },
            headers={
                "Authorization": f"Bearer {self._source.token}",
                "Content-Type": "application/octet-stream",
            },
            content=_nonempty(body()),
        )
        if response.status_code != 201:
            raise OutputRefused(
                f"the gateway refused the new version of {model!r} "
                f"({response.status_code}: {response.text[:300]})"
            )
        made = response.json()
        return self._versions(str(made["model"]), int(made["number"]))

    def keep_checkpoint(self, job_id: str, folder: Path) -> bool:
        """Send the checkpoint folder as a plain tar of its three files, its length announced
        (a gateway refuses one too large before reading it)."""
        try:
            response = self._http.post(
                f"{self._source.url.rstrip('/')}{CHECKPOINTS_ROUTE}",
                params={"job": job_id},
                headers={
                    "Authorization": f"Bearer {self._source.token}",
                    "Content-Type": "application/x-tar",
                    "Content-Length": str(archive_length(folder)),
                },
                content=_nonempty(archive_chunks(folder)),
            )
        except (httpx.HTTPError, OSError) as exc:
            raise CheckpointRefused(0, f"sending it failed: {exc}") from exc
        if response.status_code != 201:
            raise CheckpointRefused(response.status_code, response.text[:300])
        return True

    def fetch_checkpoint(self, job_id: str, directory: Path, *, after: int | None) -> Path | None:
        """The archive streamed from the gateway and unpacked (checked again here, as the
        gateway checked it) into ``directory``."""
        params = {"job": job_id} | ({} if after is None else {"after": str(after)})
        headers = {"Authorization": f"Bearer {self._source.token}"}
        url = f"{self._source.url.rstrip('/')}{CHECKPOINTS_ROUTE}"
        try:
            with self._http.stream("GET", url, params=params, headers=headers) as response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    text = response.read().decode(errors="replace")[:300]
                    raise CheckpointRefused(response.status_code, text)
                return unpack(_ChunkReader(response.iter_bytes(1 << 20)), directory)
        except InvalidRequestError as exc:
            raise CheckpointRefused(0, f"the checkpoint sent is not one: {exc}") from exc
        except (httpx.HTTPError, OSError) as exc:
            raise CheckpointRefused(0, f"fetching it failed: {exc}") from exc


class OutputRefused(RuntimeError):
    """The gateway did not store an output file or a new version."""


class CheckpointRefused(RuntimeError):
    """A checkpoint was not kept at, or fetched from, the gateway (``status``: its HTTP status,
    0 when no answer came)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}" if status else detail)
        self.status = status


class _ChunkReader:
    """A readable stream over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def read(self, size: int = -1, /) -> bytes:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._pending = chunk
        if size < 0 or size >= len(self._pending):
            data, self._pending = self._pending, b""
            return data
        data, self._pending = self._pending[:size], self._pending[size:]
        return data


FolderEntry = tuple[str, int, Callable[[], BinaryIO]]


def folder_entries(root: Path) -> list[FolderEntry]:
    """The regular files under ``root`` (a folder this runner wrote), as (relative POSIX path,
    size, opener) in path order; links are not followed (the gateway checks every name again)."""
    entries: list[FolderEntry] = []
    for directory, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            file = Path(directory) / name
            if file.is_file() and not file.is_symlink():
                relative = file.relative_to(root).as_posix()
                entries.append((relative, file.stat().st_size, partial(_open_binary, file)))
    return sorted(entries, key=lambda e: e[0])


def _open_binary(path: Path) -> BinaryIO:
    return path.open("rb")


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from iter(partial(f.read, 1 << 20), b"")


def _nonempty(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        if chunk:
            yield chunk
