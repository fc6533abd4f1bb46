"""Content-addressed blob store: ``<root>/blobs/sha256-<64 hex>``.

A write streams into a temporary file in the blobs directory, hashing as it goes, then fsyncs
the file, renames it to its digest name and fsyncs the directory. A crash at any point leaves at
most a temporary file, which :meth:`BlobStore.sweep_temp` removes on the next start; a blob name
only ever appears for complete, fsynced content. Identical content is stored once.

A writer may be given a ``claim`` callback: it is called with the digest once the content is
known and *before* the store looks whether that blob exists, so that the caller can record its
use of the blob first (see :mod:`lmaas.store.refs`: this is what keeps a concurrent cleanup from
deleting a blob an upload has just found).

Client input never becomes a path by itself: a digest is validated against a strict pattern and
the path is rebuilt from the matched hex only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lmaas.errors import InvalidRequestError, NotFoundError, RequestTooLargeError

_DIGEST_RE = re.compile(r"(?:sha256:)?([0-9a-f]{64})")
_BLOB_NAME_RE = re.compile(r"sha256-([0-9a-f]{64})")
_TEMP_PREFIX = ".partial-"
_READ_CHUNK = 1 << 20

Claim = Callable[[str], None]


def normalize_digest(digest: str) -> str:
    """``sha256:<hex>`` for a valid digest (``sha256:<64 lowercase hex>`` or bare hex).

    Raises ``InvalidRequestError`` for anything else, including uppercase hex, whitespace,
    newlines and other algorithms.
    """
    match = _DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise InvalidRequestError(
            "digest must be 'sha256:' followed by 64 lowercase hex characters",
            param="digest",
            code="invalid_digest",
        )
    return f"sha256:{match.group(1)}"


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored blob. ``created`` is False when identical content was already stored."""

    digest: str
    size: int
    path: Path
    created: bool


class BlobWriter:
    """One in-progress write: feed chunks with :meth:`append`, then :meth:`commit` or :meth:`abort`.

    Used as a context manager, a write that did not commit is aborted (its temp file deleted).
    Thread-safe, so an abort from a cancelled async upload waits for a chunk being written.
    """

    def __init__(self, store: BlobStore, max_bytes: int, claim: Claim | None = None) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self._store = store
        self._max_bytes = max_bytes
        self._claim = claim
        self._hash = hashlib.sha256()
        self._size = 0
        self._lock = threading.Lock()
        fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=store.blobs_dir)
        self._temp = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    @property
    def size(self) -> int:
        return self._size

    def append(self, chunk: bytes) -> None:
        """Write one chunk; over the size cap the write is aborted and ``RequestTooLargeError``
        raised."""
        with self._lock:
            self._append(chunk)

    def _append(self, chunk: bytes) -> None:
        if self._file is None:
            raise RuntimeError("blob write already finished")
        if self._size + len(chunk) > self._max_bytes:
            self._abort()
            raise RequestTooLargeError(
                f"upload exceeds the limit of {self._max_bytes} bytes", code="blob_too_large"
            )
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def commit(self) -> BlobInfo:
        """Make the content durable under its digest name and return where it is (the claim
        callback, if any, runs first; if it raises, nothing is stored)."""
        with self._lock:
            return self._commit()

    def _commit(self) -> BlobInfo:
        if self._file is None:
            raise RuntimeError("blob write already finished")
        file, self._file = self._file, None
        hexdigest = self._hash.hexdigest()
        final = self._store.blobs_dir / f"sha256-{hexdigest}"
        created = False
        try:
            with file:
                file.flush()
                os.fsync(file.fileno())
            if self._claim is not None:
                self._claim(f"sha256:{hexdigest}")
            if not final.exists():
                os.replace(self._temp, final)
                created = True
                _fsync_dir(self._store.blobs_dir)
        finally:
            if not created:  # identical content already stored, or the commit failed
                self._temp.unlink(missing_ok=True)
        return BlobInfo(digest=f"sha256:{hexdigest}", size=self._size, path=final, created=created)

    def abort(self) -> None:
        """Drop the temporary file; safe to call more than once and after a commit (no-op)."""
        with self._lock:
            self._abort()

    def _abort(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()
            self._temp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class BlobStore:
    """Blobs under ``root/blobs``. Safe for concurrent writers of the same content."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, digest: str) -> Path:
        """The path a blob with this digest has (whether or not it exists)."""
        hexdigest = normalize_digest(digest).removeprefix("sha256:")
        return self.blobs_dir / f"sha256-{hexdigest}"

    def writer(self, max_bytes: int, claim: Claim | None = None) -> BlobWriter:
        return BlobWriter(self, max_bytes, claim)

    def write(
        self, chunks: Iterable[bytes], max_bytes: int, claim: Claim | None = None
    ) -> BlobInfo:
        """Store everything ``chunks`` yields."""
        with self.writer(max_bytes, claim) as writer:
            for chunk in chunks:
                writer.append(chunk)
            return writer.commit()

    def write_file(self, file: BinaryIO, max_bytes: int, claim: Claim | None = None) -> BlobInfo:
        """Store the rest of an open binary file (read in 1 MiB chunks)."""
        return self.write(_file_chunks(file), max_bytes, claim)

    async def write_async(
        self, stream: AsyncIterable[bytes], max_bytes: int, claim: Claim | None = None
    ) -> BlobInfo:
        """Like :meth:`write` for an async stream (an HTTP body); disk work runs off the loop."""
        writer = await asyncio.to_thread(self.writer, max_bytes, claim)
        try:
            async for chunk in stream:
                if chunk:
                    await asyncio.to_thread(writer.append, chunk)
            return await asyncio.to_thread(writer.commit)
        finally:
            await asyncio.to_thread(writer.abort)

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path_for(digest).stat().st_size
        except FileNotFoundError:
            raise _not_found(digest) from None

    def check(self, digest: str, size: int | None = None, *, rehash: bool = False) -> str | None:
        """What is wrong with a stored blob, or ``None``: it is missing, it has another size
        than ``size``, or (with ``rehash``, which reads it whole) its content no longer hashes
        to its name."""
        digest = normalize_digest(digest)
        path = self.path_for(digest)
        if not path.is_file():
            return f"blob {digest} is missing"
        actual = path.stat().st_size
        if size is not None and actual != size:
            return f"blob {digest} has {actual} bytes instead of {size}"
        if rehash:
            hasher = hashlib.sha256()
            with path.open("rb") as f:
                for chunk in _file_chunks(f):
                    hasher.update(chunk)
            if f"sha256:{hasher.hexdigest()}" != digest:
                return f"blob {digest} is damaged (its content no longer matches its digest)"
        return None

    def open(self, digest: str) -> BinaryIO:
        """The blob opened for binary reading; ``NotFoundError`` if it is not stored."""
        try:
            return self.path_for(digest).open("rb")
        except FileNotFoundError:
            raise _not_found(digest) from None

    def delete(self, digest: str) -> bool:
        """Remove a blob; True if it existed."""
        path = self.path_for(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.blobs_dir)
        return True

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest (for garbage collection against the catalog)."""
        for entry in self.blobs_dir.iterdir():
            match = _BLOB_NAME_RE.fullmatch(entry.name)
            if match is not None and entry.is_file():
                yield f"sha256:{match.group(1)}"

    def sweep_temp(self) -> int:
        """Remove temporary files left by interrupted writes; returns how many were removed.

        Call at start-up, before accepting uploads: a write in progress would lose its file.
        """
        removed = 0
        for entry in self.blobs_dir.iterdir():
            if entry.name.startswith(_TEMP_PREFIX) and not entry.is_dir():
                entry.unlink(missing_ok=True)
                removed += 1
        return removed


def _file_chunks(file: BinaryIO) -> Iterator[bytes]:
    while chunk := file.read(_READ_CHUNK):
        yield chunk


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        # Some filesystems refuse fsync on a directory; the rename is then as durable as it gets.
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _not_found(digest: str) -> NotFoundError:
    return NotFoundError(f"blob {normalize_digest(digest)} is not stored", code="blob_not_found")
