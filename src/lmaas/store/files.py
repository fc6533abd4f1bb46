"""The files of the Files API: one row in ``files`` each, their bytes in the blob store.

A file's row keeps its blob in use (:mod:`lmaas.store.refs` counts ``files`` beside version
refs and upload leases), so no sweep deletes it; deleting a file deletes its blob only when
no version, no other file and no upload uses the same bytes. An upload holds a lease on its
blob from the moment the blob's digest is known until its row is committed, as model uploads
do, so a concurrent deletion of identical bytes can never leave a file without its blob.

Files belong to the API key that uploaded them (``owner_key_id``; NULL on an open server with
no keys: one shared owner). A :class:`Viewer` sees its own files, an admin viewer every file;
another key's file is answered as not found, so ids do not reveal what others stored.

A file used by a job cannot be deleted: the jobs code registers a :data:`FileUser` check with
:meth:`FileStore.add_user`, and :meth:`FileStore.delete` refuses (409) while one answers a
reason. Everything here blocks (SQL, disk) except :meth:`FileStore.upload`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import secrets
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Final, Literal, Protocol

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from lmaas.db import as_utc, utc_now
from lmaas.errors import ConflictError, InvalidRequestError, NotFoundError, RequestTooLargeError
from lmaas.store.archive import Readable
from lmaas.store.blobs import BlobStore
from lmaas.store.file_upload import (
    MULTIPART_OVERHEAD,
    FileLimits,
    ReceivedFile,
    clean_filename,
    receive_file,
    too_large,
)
from lmaas.store.refs import Lease
from lmaas.store.streams import AsyncStreamReader
from lmaas.store.tables import FileRow

__all__ = ["FileLimits", "FilePage", "FileStore", "FileUser", "StoredFile", "Viewer"]

log = logging.getLogger(__name__)

FILE_ID_RE: Final = re.compile(r"file-[0-9a-f]{24}")
MAX_LIST_LIMIT: Final = 10_000
MAX_PURPOSE: Final = 32
_NO_LIMIT: Final = 1 << 50
_READ_BUFFER: Final = 1 << 20

Order = Literal["asc", "desc"]
# A file id -> why a job still needs that file ("batch batch_... is running"), or None.
FileUser = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class Viewer:
    """Whose files a caller sees: those of ``key_id`` (``None``: an open server's shared
    owner), or with ``admin`` every file."""

    key_id: str | None
    admin: bool = False


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    purpose: str
    filename: str
    bytes: int
    digest: str
    created_at: datetime
    owner_key_id: str | None
    status: str


@dataclass(frozen=True, slots=True)
class FilePage:
    files: list[StoredFile]
    has_more: bool


class BlobKeeper(Protocol):
    """What files share with the model store: its blobs, upload leases and the deletion of
    blobs nothing uses (:class:`lmaas.store.model_store.ModelStore`)."""

    @property
    def blobs(self) -> BlobStore: ...

    def lease(self) -> Lease: ...

    def collect(self, digests: Iterable[str]) -> list[str]: ...


def new_file_id(now: datetime) -> str:
    """``file-`` + the creation time in microseconds (14 hex digits) + 10 random ones: ids
    sort in creation order."""
    micros = int(now.timestamp() * 1_000_000)
    return f"file-{micros:014x}{secrets.token_hex(5)}"


def _not_found(file_id: str) -> NotFoundError:
    return NotFoundError(f"no file {file_id[:64]!r}", param="file_id", code="file_not_found")


def _to_stored(row: FileRow) -> StoredFile:
    return StoredFile(
        id=row.id,
        purpose=row.purpose,
        filename=row.filename,
        bytes=row.bytes,
        digest=row.digest,
        created_at=as_utc(row.created_at),
        owner_key_id=row.owner_key_id,
        status=row.status,
    )


def _visible(viewer: Viewer) -> list[ColumnElement[bool]]:
    if viewer.admin:
        return []
    if viewer.key_id is None:
        return [FileRow.owner_key_id.is_(None)]
    return [FileRow.owner_key_id == viewer.key_id]


class FileStore:
    def __init__(
        self, session_factory: sessionmaker[Session], keeper: BlobKeeper, limits: FileLimits
    ) -> None:
        self._sessions = session_factory
        self._keeper = keeper
        self.limits = limits
        self._users: list[FileUser] = []

    # -- in use by jobs -----------------------------------------------------------------------

    def add_user(self, check: FileUser) -> None:
        """Register a check the jobs code answers: why a file is in use, or ``None``."""
        self._users.append(check)

    def in_use(self, file_id: str) -> str | None:
        """Why ``file_id`` cannot be deleted now (the first registered check that says so)."""
        for check in self._users:
            reason = check(file_id)
            if reason is not None:
                return reason
        return None

    # -- adding files ---------------------------------------------------------------------------

    async def upload(self, body: AsyncIterable[bytes], boundary: str, viewer: Viewer) -> StoredFile:
        """A file from a streamed ``multipart/form-data`` body (fields ``purpose`` and
        ``file``), checked for its purpose, owned by ``viewer``'s key."""
        raw = AsyncStreamReader(
            body, asyncio.get_running_loop(), self.limits.max_bytes + MULTIPART_OVERHEAD
        )
        stream = io.BufferedReader(raw, _READ_BUFFER)
        try:
            # One thread receives, records and lets go of the lease, in that order, even when
            # the caller is cancelled (the client went away).
            return await asyncio.to_thread(self._receive, stream, boundary, viewer.key_id)
        except RequestTooLargeError as exc:
            if exc.code == "file_too_large":
                raise
            raise too_large(self.limits) from None  # the body as a whole was too large

    def _receive(self, stream: Readable, boundary: str, owner: str | None) -> StoredFile:
        lease = self._keeper.lease()
        try:
            received = receive_file(stream, boundary, self._keeper.blobs, lease.claim, self.limits)
            return self._insert(received, owner)
        finally:
            _release(lease)

    def add(
        self,
        chunks: Iterable[bytes],
        *,
        purpose: str,
        filename: str,
        owner_key_id: str | None,
        max_bytes: int | None = None,
    ) -> StoredFile:
        """A file written by the server itself (a job's output, e.g. ``batch_output``): not
        checked for its purpose, and not held to ``files.max_bytes`` unless ``max_bytes``."""
        if not 1 <= len(purpose) <= MAX_PURPOSE:
            raise InvalidRequestError(f"purpose must be 1 to {MAX_PURPOSE} characters")
        name = clean_filename(filename)
        lease = self._keeper.lease()
        try:
            limit = _NO_LIMIT if max_bytes is None else max_bytes
            blob = self._keeper.blobs.write(chunks, limit, lease.claim)
            return self._insert(ReceivedFile(purpose, name, blob), owner_key_id)
        finally:
            _release(lease)

    def _insert(self, received: ReceivedFile, owner: str | None) -> StoredFile:
        now = utc_now()
        row = FileRow(
            id=new_file_id(now),
            purpose=received.purpose,
            filename=received.filename,
            bytes=received.blob.size,
            digest=received.blob.digest,
            created_at=now,
            owner_key_id=owner,
            status="processed",
        )
        with self._sessions.begin() as session:
            session.add(row)
        return _to_stored(row)

    # -- reading --------------------------------------------------------------------------------

    def get(self, file_id: str, viewer: Viewer) -> StoredFile:
        """The file, if ``viewer`` may see it (404 otherwise, as for an unknown id)."""
        with self._sessions.begin() as session:
            return _to_stored(_find(session, file_id, viewer))

    def list(
        self,
        viewer: Viewer,
        *,
        after: str | None = None,
        limit: int = MAX_LIST_LIMIT,
        order: Order = "desc",
        purpose: str | None = None,
    ) -> FilePage:
        """Up to ``limit`` files ``viewer`` sees, newest first (``desc``) or oldest first,
        starting after the file id ``after`` (which need not exist any more)."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequestError(
                f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit"
            )
        if after is not None and FILE_ID_RE.fullmatch(after) is None:
            raise InvalidRequestError("after must be a file id", param="after")
        query = select(FileRow).where(*_visible(viewer))
        if purpose is not None:
            query = query.where(FileRow.purpose == purpose)
        if after is not None:
            query = query.where(FileRow.id < after if order == "desc" else FileRow.id > after)
        query = query.order_by(FileRow.id.desc() if order == "desc" else FileRow.id.asc())
        with self._sessions.begin() as session:
            rows = session.scalars(query.limit(limit + 1)).all()
        return FilePage([_to_stored(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def open(self, file_id: str, viewer: Viewer) -> tuple[StoredFile, BinaryIO]:
        """The file and its bytes opened for reading (close it)."""
        file = self.get(file_id, viewer)
        return file, self._keeper.blobs.open(file.digest)

    # -- deleting -------------------------------------------------------------------------------

    def delete(self, file_id: str, viewer: Viewer) -> StoredFile:
        """Delete the file, and its blob unless a version, another file or an upload uses the
        same bytes. 409 while a job uses the file."""
        self.get(file_id, viewer)  # 404 first: whether a hidden file is in use is not told
        reason = self.in_use(file_id)
        if reason is not None:
            raise ConflictError(
                f"file {file_id} is in use ({reason}); it can be deleted once that is over",
                param="file_id",
                code="file_in_use",
            )
        with self._sessions.begin() as session:
            row = _find(session, file_id, viewer, lock=True)
            file = _to_stored(row)
            session.delete(row)
        self._keeper.collect([file.digest])
        return file


def _find(session: Session, file_id: str, viewer: Viewer, *, lock: bool = False) -> FileRow:
    if FILE_ID_RE.fullmatch(file_id) is None:
        raise _not_found(file_id)
    query = select(FileRow).where(FileRow.id == file_id, *_visible(viewer))
    if lock:
        query = query.with_for_update()
    row = session.scalar(query)
    if row is None:
        raise _not_found(file_id)
    return row


def _release(lease: Lease) -> None:
    try:
        lease.release()
    except Exception:  # the upload's own outcome matters more; the next start sweeps leases
        log.exception("releasing the blobs of upload %s failed", lease.id)
