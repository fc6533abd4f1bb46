"""A cluster node's own copy of the model files it serves, fetched by digest from the gateway.

Nodes share no disk with the gateway. A replica on a node asks the gateway's blob route
(``GET /internal/blobs/<hex>``, with the cluster's token) for each file of its model by sha256
digest, streams it into a blob store of the node (``<cache>/blobs/sha256-<hex>``, the same
content-addressed layout and atomic writes as the gateway's store), and keeps it only when its
bytes hash to the digest asked for. A Hugging Face folder is then built from hard links to those
blobs (``<cache>/models/<manifest hex>/``), as the gateway builds its own. Blobs already in the
cache with the expected size are used again without a download.

The cache is kept under ``max_bytes`` (``cluster.node_cache_max_bytes``; 0: no bound) by
:mod:`lmaas.store.node_prune`, at start, before a download of known size (down to
``max_bytes`` less that size, so the blob fits) and after each download: what was used least
recently goes first, never what a live process on the node pins. The bound counts finished
blobs and folders only: downloads in flight (each made room for before it starts, but several
at once can each take that room) and job work directories (``jobs/``) come on top of it. A
process pins what it uses in a :class:`~lmaas.store.node_prune.Lease` (:meth:`NodeCache.lease`)
and holds it as long as it reads the files: a replica's actor for its worker's life, a job
runner's job until that job's run ends. The lease is pinned *before* the cache is looked at, so
nothing it found can go before it is let go; a call given no lease pins only for its own
duration.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from lmaas.errors import RequestTooLargeError
from lmaas.store.blobs import BlobStore, normalize_digest
from lmaas.store.folder import FolderFile
from lmaas.store.materialize import FolderCache
from lmaas.store.node_prune import Lease, Pruner, PruneReport, cache_lock, live_pins

log = logging.getLogger(__name__)

BLOB_ROUTE = "/internal/blobs/"
_CHUNK = 1 << 20


class BlobFetchError(RuntimeError):
    """A blob could not be fetched, or its bytes were not what its digest says."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where a node fetches blobs: the gateway's URL and the token its blob route takes."""

    url: str
    token: str
    timeout: float = 60.0


class NodeCache:
    """Model files on this node, under ``root`` (created on first use), kept under
    ``max_bytes`` (0: no bound). Making one sweeps what interrupted writes left and prunes."""

    def __init__(self, root: Path, max_bytes: int = 0) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.blobs = BlobStore(root)
        self.folders = FolderCache(root / "models", self.blobs)
        self._pruner = Pruner(
            self.blobs.blobs_dir, self.folders.root, self.blobs.delete, self.folders.remove
        )
        self._prune_quietly(sweep=True)

    def lease(self) -> Lease:
        """A new lease on this cache: what it pins stays until it is cleared or released (or
        this process ends); what it lets go is marked used then, for the LRU order."""
        return Lease(self.root, self._touch_all)

    def model_path(
        self,
        source: Source,
        fmt: Literal["gguf", "hf"] | None,
        digest: str,
        files: Sequence[FolderFile],
        client: httpx.Client | None = None,
        *,
        lease: Lease | None = None,
    ) -> Path:
        """The model's file (GGUF) or folder (Hugging Face) on this node, fetched as needed and
        pinned by ``lease`` (hold it while the path is in use)."""
        with contextlib.ExitStack() as stack:
            if lease is None:
                lease = stack.enter_context(self.lease())
            lease.add([digest, *(file.digest for file in files)])
            with client or httpx.Client(timeout=source.timeout) as http:
                for file in files:
                    self.ensure_blob(source, file.digest, file.size, http, lease=lease)
            if fmt == "hf":
                return self.folder(digest, files, lease=lease)
            return self.blobs.path_for(digest)

    def folder(self, digest: str, files: Sequence[FolderFile], *, lease: Lease) -> Path:
        """The folder of the manifest ``digest`` built from its blobs (fetched by the caller),
        pinned by ``lease``. Pruning never leaves a folder whose blobs are gone: it is removed
        with them, and built again here on its next use."""
        lease.add([digest, *(file.digest for file in files)])
        if self.folders.complete(digest, files):
            path = self.folders.path_for(digest)
        else:
            # Built under the cache lock: a build that finds a folder incomplete sets it aside,
            # which must never be one another process has just built and is reading.
            with cache_lock(self.root):
                path = self.folders.ensure(digest, files)
        _touch(path)
        return path

    def ensure_blob(
        self,
        source: Source,
        digest: str,
        size: int | None,
        http: httpx.Client,
        *,
        max_bytes: int = 0,
        lease: Lease | None = None,
    ) -> Path:
        """The blob ``digest`` of ``size`` bytes in the cache, downloaded when it is not
        (``size`` None: not known, as for a folder's manifest; at most ``max_bytes`` then),
        pinned by ``lease``; the cache is pruned to make room for a download of known size
        first, and again after any download."""
        digest = normalize_digest(digest)
        with contextlib.ExitStack() as stack:
            if lease is None:
                lease = stack.enter_context(self.lease())
            lease.add([digest])
            if self.blobs.check(digest, size) is None:
                path = self.blobs.path_for(digest)
                _touch(path)
                return path
            if self.max_bytes > 0 and size is not None:
                self._prune_quietly(room=size)
            path = self._download(source, digest, size, http, max_bytes)
            if self.max_bytes > 0:
                self._prune_quietly()
            return path

    def prune(self, *, sweep: bool = False, room: int = 0) -> PruneReport:
        """Evict what was used least recently and no live lease pins until the cache holds at
        most ``max_bytes`` (less ``room``: bytes about to be written); with ``sweep``, remove
        unfinished writes first (see :meth:`Pruner.sweep`) and the pins of processes that are
        gone."""
        bound = max(self.max_bytes - room, 0) if self.max_bytes > 0 else None
        with cache_lock(self.root):
            swept = self._pruner.sweep() if sweep else 0
            pinned = live_pins(self.root) if sweep or bound is not None else set()
            report = self._pruner.prune(bound, pinned)
        report.swept = swept
        if report.blobs or report.folders:
            log.info(
                "node cache %s: evicted %d blobs and %d folders (%d bytes); %d bytes held",
                self.root,
                report.blobs,
                report.folders,
                report.freed,
                report.held,
            )
        if self.max_bytes > 0 and report.held > self.max_bytes:
            log.warning(
                "node cache %s holds %d bytes, over its bound of %d: the rest is in use by "
                "replicas or jobs on this node",
                self.root,
                report.held,
                self.max_bytes,
            )
        return report

    def _prune_quietly(self, *, sweep: bool = False, room: int = 0) -> None:
        """Prune; a failure (a file system refusing a removal or a lock) is logged, and what was
        fetched is still served."""
        try:
            self.prune(sweep=sweep, room=room)
        except OSError as exc:
            log.warning("node cache %s: pruning failed: %s", self.root, exc)

    def _touch_all(self, digests: Iterable[str]) -> None:
        """Mark blobs and folders used now (a lease letting them go)."""
        for digest in digests:
            _touch(self.blobs.path_for(digest))
            _touch(self.folders.path_for(digest))

    def _download(
        self, source: Source, digest: str, size: int | None, http: httpx.Client, max_bytes: int
    ) -> Path:
        url = f"{source.url.rstrip('/')}{BLOB_ROUTE}{digest.removeprefix('sha256:')}"
        headers = {"Authorization": f"Bearer {source.token}"}
        try:
            with http.stream("GET", url, headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                    raise BlobFetchError(
                        f"fetching blob {digest} from {source.url} answered "
                        f"{response.status_code}: {response.text[:300]}"
                    )
                limit = size if size is not None else max_bytes
                info = self.blobs.write(_chunks(response), max_bytes=limit)
        except httpx.HTTPError as exc:
            raise BlobFetchError(f"fetching blob {digest} from {source.url}: {exc}") from exc
        except RequestTooLargeError as exc:  # more bytes than the blob has
            raise BlobFetchError(f"blob {digest} from {source.url}: {exc.message}") from exc
        if info.digest != digest or (size is not None and info.size != size):
            # Stored under the digest of what arrived, never under the one asked for; a blob
            # that was already in the cache under that digest is a good one and stays.
            if info.created:
                self.blobs.delete(info.digest)
            raise BlobFetchError(
                f"blob {digest} from {source.url} arrived as {info.size} bytes hashing to "
                f"{info.digest}; discarded"
            )
        log.info("fetched blob %s (%d bytes) from %s", digest, info.size, source.url)
        return info.path


def _touch(path: Path) -> None:
    """Mark a blob or folder used now (its modification time: the LRU order's clock)."""
    with contextlib.suppress(OSError):  # not there (a folder never built): nothing to mark
        os.utime(path, follow_symlinks=False)


def _chunks(response: httpx.Response) -> Iterator[bytes]:
    yield from response.iter_bytes(_CHUNK)
