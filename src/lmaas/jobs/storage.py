"""Where a job runner reads its input files and writes its output files: the seam between the
handlers (batch, eval runs) and the store.

- :class:`LocalJobFiles` is the store itself (the runner beside the gateway shares its disk).
- :class:`GatewayJobFiles` is for a runner on a Ray node with no shared disk: an input file's
  bytes are fetched by sha256 from the gateway (``GET /internal/blobs/<hex>``, with the
  runner's secret) into the node's cache and kept only when they hash to the file's digest
  (:class:`lmaas.controller.cluster.node_cache.NodeCache`); its row (digest, size) is read from
  the catalog, which such a runner reaches by URL (PostgreSQL). An output file is streamed to the
  gateway (``POST /internal/files``), which stores it and answers its id.

Everything here blocks (SQL, disk, HTTP): handlers call it on a thread (``ctx.call``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, Final, Protocol

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lmaas.controller.cluster.node_cache import NodeCache, Source
from lmaas.errors import NotFoundError
from lmaas.store.files import FileStore, Viewer
from lmaas.store.tables import FileRow

FILES_ROUTE: Final = "/internal/files"
# Purposes of the files a runner writes through the gateway.
OUTPUT_PURPOSES: Final = frozenset({"batch_output"})
_EVERYONE: Final = Viewer(None, admin=True)
_UPLOAD_TIMEOUT: Final = httpx.Timeout(connect=10.0, read=600.0, write=600.0, pool=60.0)


class JobFiles(Protocol):
    """The files API as a job handler sees it."""

    def open_input(self, file_id: str) -> BinaryIO:
        """The bytes of file ``file_id`` (any owner's), opened for reading (close it)."""

    def add_output(
        self, chunks: Iterable[bytes], *, purpose: str, filename: str, owner_key_id: str | None
    ) -> str:
        """Store a file the job made, owned by ``owner_key_id``; its id."""


class LocalJobFiles:
    """The store on this machine's disk (the runner beside the gateway)."""

    def __init__(self, files: FileStore) -> None:
        self.files = files

    def open_input(self, file_id: str) -> BinaryIO:
        return self.files.open(file_id, _EVERYONE)[1]

    def add_output(
        self, chunks: Iterable[bytes], *, purpose: str, filename: str, owner_key_id: str | None
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


class GatewayJobFiles:
    """Files through the gateway, for a runner on another node (see the module doc)."""

    def __init__(
        self,
        lookup: FileLookup,
        cache: NodeCache,
        source: Source,
        *,
        verify: bool = True,
        client: httpx.Client | None = None,
    ) -> None:
        self._lookup = lookup
        self._cache = cache
        self._source = source
        self._http = client or httpx.Client(timeout=_UPLOAD_TIMEOUT, verify=verify)

    def close(self) -> None:
        self._http.close()

    def open_input(self, file_id: str) -> BinaryIO:
        found = self._lookup(file_id)
        if found is None:
            raise NotFoundError(f"no file {file_id[:64]!r}", param="file_id")
        digest, size = found
        path = self._cache.ensure_blob(self._source, digest, size, self._http)
        return path.open("rb")

    def add_output(
        self, chunks: Iterable[bytes], *, purpose: str, filename: str, owner_key_id: str | None
    ) -> str:
        response = self._http.post(
            f"{self._source.url.rstrip('/')}{FILES_ROUTE}",
            params={"purpose": purpose, "filename": filename, "owner": owner_key_id or ""},
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


class OutputRefused(RuntimeError):
    """The gateway did not store an output file."""


def _nonempty(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        if chunk:
            yield chunk
