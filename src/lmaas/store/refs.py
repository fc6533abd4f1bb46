"""Which blobs are in use, and the one place that deletes blob files.

A blob is in use while a version references it (``blob_refs``), a file of the Files API
holds its bytes in it (``files``, see :mod:`lmaas.store.files`) or an upload holds a lease on
it (``blob_leases``). An upload takes its lease on a digest *before* it looks whether
the blob is already stored (:meth:`BlobRefs.claim`), keeps it until its version's references
are committed, then lets go (:meth:`BlobRefs.release`). A blob file is only ever deleted by
:meth:`BlobRefs.collect`, which checks both tables and unlinks while holding the blob lock.
Claims take the same lock, so a claim either sees the file gone (and puts its own copy in
place) or its lease keeps the file from being deleted: two uploads of the same content, or an
upload beside a deletion, can never leave a version pointing at a missing blob.

The blob lock is SQLite's write lock (every transaction starts with ``BEGIN IMMEDIATE``, see
:mod:`lmaas.db`) and a transaction-scoped advisory lock on PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import delete, select, text, union
from sqlalchemy.orm import Session, sessionmaker

from lmaas.db import utc_now
from lmaas.store.blobs import normalize_digest
from lmaas.store.tables import BlobLeaseRow, BlobRefRow, FileRow

# pg_advisory_xact_lock key: "lmaas" + "blob" as bytes, so it is unlikely to meet another
# application's key on a shared database.
_PG_BLOB_LOCK: Final = 0x6C6D616173626C6F

Unlink = Callable[[str], None]


def lock_blobs(session: Session) -> None:
    """Take the blob lock for the rest of ``session``'s transaction."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_BLOB_LOCK})
    # SQLite: the transaction already holds the database's write lock (BEGIN IMMEDIATE).


def _in_use(session: Session, digests: Iterable[str]) -> set[str]:
    wanted = sorted(set(digests))
    if not wanted:
        return set()
    query = union(
        select(BlobRefRow.digest).where(BlobRefRow.digest.in_(wanted)),
        select(FileRow.digest).where(FileRow.digest.in_(wanted)),
        select(BlobLeaseRow.digest).where(BlobLeaseRow.digest.in_(wanted)),
    )
    return set(session.scalars(query).all())


class BlobRefs:
    """Blob references and leases over ``session_factory``; blocking (SQL and disk)."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def lease(self, unlink: Unlink) -> Lease:
        """A new upload's lease; :meth:`Lease.release` it when the upload ends, either way."""
        return Lease(self, unlink)

    def claim(self, upload: str, digest: str) -> None:
        """Record that ``upload`` uses ``digest``. Call before looking at the blob's file."""
        digest = normalize_digest(digest)
        with self._sessions.begin() as session:
            lock_blobs(session)
            if session.get(BlobLeaseRow, (upload, digest)) is None:
                session.add(BlobLeaseRow(upload=upload, digest=digest, created_at=utc_now()))

    def release(self, upload: str, unlink: Unlink) -> list[str]:
        """Drop ``upload``'s leases and delete the blobs nothing uses any more (those its
        version, if it made one, references are kept). Returns the deleted digests."""
        with self._sessions.begin() as session:
            lock_blobs(session)
            query = select(BlobLeaseRow.digest).where(BlobLeaseRow.upload == upload)
            digests = set(session.scalars(query).all())
            session.execute(delete(BlobLeaseRow).where(BlobLeaseRow.upload == upload))
            return self._collect(session, digests, unlink)

    def collect(self, digests: Iterable[str], unlink: Unlink) -> list[str]:
        """Delete those of ``digests`` that no version, file or upload uses; returns them."""
        with self._sessions.begin() as session:
            lock_blobs(session)
            return self._collect(session, {normalize_digest(d) for d in digests}, unlink)

    @staticmethod
    def _collect(session: Session, digests: set[str], unlink: Unlink) -> list[str]:
        # Unlinked before the lock is let go: a claim waiting for it then finds no file.
        unused = sorted(digests - _in_use(session, digests))
        for digest in unused:
            unlink(digest)
        return unused

    def sweep_leases(self) -> int:
        """Drop every lease (left by uploads a crash interrupted); call at start-up, before
        accepting uploads. Returns how many were dropped."""
        with self._sessions.begin() as session:
            lock_blobs(session)
            result = session.execute(delete(BlobLeaseRow))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def is_referenced(self, digest: str) -> bool:
        """Whether any version (pending ones included), file or upload uses the blob."""
        with self._sessions.begin() as session:
            return bool(_in_use(session, [normalize_digest(digest)]))

    def referenced(self) -> set[str]:
        """Every digest a version, a file or an upload uses."""
        with self._sessions.begin() as session:
            refs = select(BlobRefRow.digest)
            files = select(FileRow.digest)
            leases = select(BlobLeaseRow.digest)
            return set(session.scalars(union(refs, files, leases)).all())

    def leased(self, upload: str) -> set[str]:
        with self._sessions.begin() as session:
            query = select(BlobLeaseRow.digest).where(BlobLeaseRow.upload == upload)
            return set(session.scalars(query).all())


@dataclass
class Lease:
    """The blobs one upload wrote or found, kept until the upload is over.

    Pass :meth:`claim` to the blob writers of the upload; call :meth:`release` once, after the
    version was recorded or the upload failed (safe to call again).
    """

    refs: BlobRefs
    unlink: Unlink
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def claim(self, digest: str) -> None:
        self.refs.claim(self.id, digest)

    def release(self) -> list[str]:
        return self.refs.release(self.id, self.unlink)
