"""Keeping a node's cache (:class:`lmaas.store.node_cache.NodeCache`) under its size bound.

Every process on a node that uses the cache (replica actors, job runners) shares its
directory. Three things make pruning safe among them:

- **The cache lock**, an exclusive ``flock`` on ``<cache>/.lock``: pruning holds it from the
  reading of the pins to the last removal, and a pin file is only made or replaced under it,
  so a prune sees every pin made before it and none half-written. A lease's new pins go to a
  new pin file, which then replaces the old one: a write that fails (a full disk) leaves the
  old file, and the pins it held, as they were.
- **Pins.** A process pins the digests it uses (blobs, and folders by their manifest digest)
  in a :class:`Lease`: a file ``<cache>/pins/<pid>-<random>.pin`` listing them, which the
  process holds an exclusive ``flock`` on for as long as the lease lives. The kernel drops that
  lock when the process ends, however it ends (killed, its node's Ray worker gone), so a pin
  file whose lock a prune can take belongs to no live process: it is ignored and removed. No
  pid is trusted (pids are reused and differ between containers that share a volume). A lease
  pins its digests *before* the cache is looked at, so what it finds there stays.
- **Order of removal.** A Hugging Face folder is hard links to blobs: a blob's bytes are only
  freed once every folder that links it is gone too. Such folders are removed first (renamed
  aside, then deleted), then the blob; a crash between them leaves a blob without its folder,
  which the next use builds again. A folder never outlives the blobs it was built from.

Eviction is least recently used: a blob's time is its modification time, a folder's that of
its directory, both set by the cache when it hands them out and when a lease lets them go
(never the access time, which many mounts do not keep). Sizes are counted once per inode. Only
names the cache itself writes are considered (``blobs/sha256-<hex>``, ``models/<hex>``, regular
files and directories, never a symbolic link), so nothing outside the cache root is touched.
Job work directories (``jobs/``) are their jobs' to remove and are neither counted nor evicted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from lmaas.errors import InvalidRequestError
from lmaas.store.blobs import normalize_digest

log = logging.getLogger(__name__)

LOCK_NAME: Final = ".lock"
PINS_DIR: Final = "pins"
# Unfinished blob writes and folder builds older than this (by their last write) are swept.
STALE_TEMP_SECONDS: Final = 3600.0
_TEMP_PREFIX: Final = ".partial-"
_PIN_RE: Final = re.compile(r"[0-9]{1,10}-[0-9a-f]{16}\.pin")
_BLOB_RE: Final = re.compile(r"sha256-([0-9a-f]{64})")
_HEX_RE: Final = re.compile(r"[0-9a-f]{64}")
_MAX_PIN_BYTES: Final = 4 << 20
_OPEN_FLAGS: Final = os.O_NOFOLLOW | os.O_CLOEXEC

Inode = tuple[int, int]


@contextlib.contextmanager
def cache_lock(root: Path) -> Iterator[None]:
    """The cache-wide lock: across processes, and across threads (each call opens its own file
    description, and ``flock`` locks are per description)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # which drops the lock


class LeaseReleased(RuntimeError):
    """A released lease was asked to pin (a late caller: its pins would outlive their user)."""


class Lease:
    """Digests this process uses from the cache at ``root`` (see the module doc). Its pin file
    is made on the first :meth:`add`; :meth:`release` (or the process's end) lets it go, for
    good: it pins nothing more after. ``on_drop`` is called with digests about to be unpinned
    (the cache marks them used)."""

    def __init__(self, root: Path, on_drop: Callable[[Iterable[str]], None] | None = None) -> None:
        self.root = root
        self._on_drop = on_drop
        self._digests: set[str] = set()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._released = False

    @property
    def digests(self) -> frozenset[str]:
        return frozenset(self._digests)

    def add(self, digests: Iterable[str]) -> None:
        """Pin ``digests`` (``InvalidRequestError`` for one that is not a sha256 digest;
        :class:`LeaseReleased` once released). When the pin file cannot be written (``OSError``)
        the pins are as they were before the call."""
        wanted = {normalize_digest(d) for d in digests}
        with self._lock:
            if self._released:
                raise LeaseReleased(f"a released lease of the node cache {self.root} cannot pin")
            if self._fd is not None and wanted <= self._digests:
                return
            before = set(self._digests)
            self._digests |= wanted
            try:
                self._write()
            except BaseException:
                self._digests = before
                raise

    def release(self) -> None:
        """Unpin everything and remove the pin file (safe to call more than once)."""
        with self._lock:
            self._released = True
            self._drop()
            fd, path, self._fd, self._path = self._fd, self._path, None, None
            if fd is None or path is None:
                return
            try:
                with cache_lock(self.root):
                    path.unlink(missing_ok=True)
            finally:
                os.close(fd)  # its lock goes with it: a file left behind pins nothing

    def _drop(self) -> None:
        if self._digests and self._on_drop is not None:
            self._on_drop(sorted(self._digests))  # while still pinned: they cannot go meanwhile
        self._digests.clear()

    def _write(self) -> None:
        """Write the pins to a new pin file, then remove the old one, under the cache lock (a
        prune sees one or the other); when the write fails the old file stays as it was."""
        body = json.dumps({"pid": os.getpid(), "digests": sorted(self._digests)}).encode()
        with cache_lock(self.root):
            pins = self.root / PINS_DIR
            pins.mkdir(exist_ok=True)
            path = pins / f"{os.getpid()}-{secrets.token_hex(8)}.pin"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody holds it
                _write_all(fd, body)
            except BaseException:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
            old_fd, old_path = self._fd, self._path
            self._fd, self._path = fd, path
            if old_fd is not None and old_path is not None:
                with contextlib.suppress(OSError):  # left behind, unlocked, it pins nothing
                    old_path.unlink(missing_ok=True)
                os.close(old_fd)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def live_pins(root: Path) -> set[str]:
    """The digests the live leases of the cache at ``root`` pin; pin files no process holds are
    removed. Call it holding :func:`cache_lock`."""
    pinned: set[str] = set()
    for entry in _entries(root / PINS_DIR):
        if not _PIN_RE.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | _OPEN_FLAGS)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    log.warning("node cache: pin file %s cannot be locked: %s", entry.name, exc)
                pinned |= _pin_digests(fd, entry.name)  # held: its process lives (or unsure)
                continue
            log.info("node cache %s: dropped the pins of a process that is gone", root)
            os.unlink(entry.path)
        finally:
            os.close(fd)
    return pinned


def _write_all(fd: int, body: bytes) -> None:
    """All of ``body`` at the start of ``fd`` (a short write goes on where it stopped)."""
    written = 0
    while written < len(body):
        written += os.pwrite(fd, body[written:], written)


def _pin_digests(fd: int, name: str) -> set[str]:
    try:
        data = json.loads(os.pread(fd, _MAX_PIN_BYTES, 0))
        return {normalize_digest(d) for d in data["digests"]}
    except (ValueError, KeyError, TypeError, InvalidRequestError):
        log.warning("node cache: pin file %s is unreadable; it pins nothing", name)
        return set()


@dataclass
class PruneReport:
    """What a prune did: blobs and folders evicted, bytes freed, bytes held after."""

    blobs: int = 0
    folders: int = 0
    freed: int = 0
    held: int = 0
    swept: int = 0  # unfinished writes and builds removed


@dataclass
class _Entry:
    kind: Literal["blob", "folder"]
    digest: str
    used: float
    inodes: set[Inode] = field(default_factory=set)


class Pruner:
    """Evicts from ``blobs_dir`` (``sha256-<hex>`` files) and ``models_dir`` (``<hex>``
    folders); ``remove_blob`` and ``remove_folder`` take a digest (the cache's own removals,
    which rebuild the path from the digest). Call :meth:`prune` holding :func:`cache_lock`."""

    def __init__(
        self,
        blobs_dir: Path,
        models_dir: Path,
        remove_blob: Callable[[str], object],
        remove_folder: Callable[[str], object],
    ) -> None:
        self.blobs_dir = blobs_dir
        self.models_dir = models_dir
        self._remove = {"blob": remove_blob, "folder": remove_folder}

    def prune(self, max_bytes: int | None, pinned: set[str]) -> PruneReport:
        """Evict the least recently used entries no pin holds until at most ``max_bytes`` are
        held (``max_bytes`` None: none evicted; 0: every one not pinned)."""
        entries, sizes = self._scan()
        holders: dict[Inode, set[int]] = {key: set() for key in sizes}
        for index, entry in enumerate(entries):
            for key in entry.inodes:
                holders[key].add(index)
        report = PruneReport(held=sum(sizes.values()))
        if max_bytes is None:
            return report
        start = report.held
        order = sorted(range(len(entries)), key=lambda i: (entries[i].used, entries[i].digest))
        gone: set[int] = set()
        for index in order:
            if report.held <= max_bytes:
                break
            entry = entries[index]
            if index in gone or entry.digest in pinned:
                continue
            if entry.kind == "folder":
                # Links only to blobs still here free nothing: it goes with its blobs. A folder
                # of copies (no hard links where it was built) is evicted by itself.
                if not any(holders[key] == {index} for key in entry.inodes):
                    continue
                victims = [index]
            else:
                # The folders linking a blob go with it, first: none outlives its blobs.
                linked = {j for key in entry.inodes for j in holders[key]} - {index}
                if any(entries[j].digest in pinned for j in linked):
                    continue
                victims = [*sorted(linked), index]
            for victim in victims:
                if not self._evict(entries[victim]):
                    break
                gone.add(victim)
                report.held -= _release(entries[victim], victim, holders, sizes)
                report.blobs += entries[victim].kind == "blob"
                report.folders += entries[victim].kind == "folder"
        report.freed = start - report.held
        return report

    def _evict(self, entry: _Entry) -> bool:
        try:
            self._remove[entry.kind](entry.digest)
        except OSError as exc:
            log.warning("node cache: could not evict %s %s: %s", entry.kind, entry.digest, exc)
            return False
        return True

    def _scan(self) -> tuple[list[_Entry], dict[Inode, int]]:
        entries: list[_Entry] = []
        sizes: dict[Inode, int] = {}
        for item in _entries(self.blobs_dir):
            match = _BLOB_RE.fullmatch(item.name)
            st = _lstat(item) if match else None
            if match and st and stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                sizes[key] = st.st_size
                entries.append(_Entry("blob", f"sha256:{match.group(1)}", st.st_mtime, {key}))
        for item in _entries(self.models_dir):
            st = _lstat(item) if _HEX_RE.fullmatch(item.name) else None
            if st and stat.S_ISDIR(st.st_mode):
                folder = _Entry("folder", f"sha256:{item.name}", st.st_mtime)
                folder.inodes = _folder_inodes(Path(item.path), sizes)
                entries.append(folder)
        return entries, sizes

    def sweep(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Remove unfinished blob writes and folder builds nothing wrote to for ``older_than``
        seconds (a live download writes every chunk; a build takes moments)."""
        removed, now = 0, time.time()
        for directory in (self.blobs_dir, self.models_dir):
            for item in _entries(directory):
                st = _lstat(item) if item.name.startswith(_TEMP_PREFIX) else None
                if st is None or now - st.st_mtime < older_than:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(item.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(item.path)
                removed += 1
        return removed


def _release(
    entry: _Entry, index: int, holders: dict[Inode, set[int]], sizes: dict[Inode, int]
) -> int:
    """Bytes freed by ``entry``'s removal (its inodes nothing else holds)."""
    freed = 0
    for key in entry.inodes:
        holders[key].discard(index)
        if not holders[key]:
            freed += sizes[key]
    return freed


def _folder_inodes(folder: Path, sizes: dict[Inode, int]) -> set[Inode]:
    inodes: set[Inode] = set()
    for directory, _dirs, names in os.walk(folder):  # links to directories are not followed
        for name in names:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                sizes[key] = st.st_size
                inodes.add(key)
    return inodes


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _lstat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False)
    except OSError:
        return None
