"""A model folder's file names, its manifest and its tar form. Pure code: no store, no catalog.

Client input never becomes a path by itself: a file's name inside a folder is accepted only in
the normal form :func:`member_path` returns, and only such names are ever joined to a directory
(when a folder is materialised on the server or extracted by ``lmaas models pull``).

The manifest is the version's content blob for a Hugging Face folder::

    {"format": "hf", "files": [{"path": "config.json", "digest": "sha256:…", "size": 612}, …]}

written canonically (sorted paths and keys, no spaces), so identical folders share one manifest.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from lmaas.errors import InvalidRequestError, RequestTooLargeError
from lmaas.store.archive import Readable, TarReader
from lmaas.store.blobs import normalize_digest

# Weights that can run code when loaded are refused everywhere.
PICKLE_SUFFIXES: Final = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

MANIFEST_FORMAT: Final = "hf"
MAX_MANIFEST_BYTES: Final = 8 << 20
MAX_PATH_CHARS: Final = 255
MAX_COMPONENT_CHARS: Final = 128
MAX_DEPTH: Final = 8

# Characters with a special meaning somewhere a path is read: Windows separators and drive
# letters, URL escapes (a `%2e%2e` decoded later), shell/Windows wildcards and reserved marks.
_FORBIDDEN_CHARS: Final = frozenset('\\:%*?"<>|')
_WINDOWS_DEVICES: Final = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
)
_BLOCK: Final = 512
_READ_CHUNK: Final = 1 << 20


def _bad_path(name: object, reason: str) -> InvalidRequestError:
    shown = repr(name)[:120] if isinstance(name, str) else "a non-text name"
    return InvalidRequestError(
        f"refused file name {shown}: {reason}", param="path", code="invalid_file_name"
    )


def member_path(name: str) -> str:  # noqa: C901 - one branch per path rule
    """The normal form (``dir/file.json``) of a file's path inside a model folder.

    ``./`` prefixes, ``.`` components and doubled or trailing slashes are dropped. Refused with
    ``InvalidRequestError``: empty names, ``..`` components, absolute paths, backslashes, drive
    letters and colons, ``%`` (URL-encoded traversal), NUL, control and non-ASCII characters,
    names that only differ on Windows (trailing dots or spaces, device names), over-long or
    over-deep paths.
    """
    if not isinstance(name, str) or not name:
        raise _bad_path(name, "the name is empty")
    if len(name) > MAX_PATH_CHARS:
        raise _bad_path(name, f"longer than {MAX_PATH_CHARS} characters")
    for ch in name:
        if not " " <= ch <= "~":
            raise _bad_path(name, "control, NUL or non-ASCII character")
        if ch in _FORBIDDEN_CHARS:
            raise _bad_path(name, f"the character {ch!r} is not allowed")
    if name.startswith("/"):
        raise _bad_path(name, "absolute paths are not allowed")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        raise _bad_path(name, "the name is empty")
    if len(parts) > MAX_DEPTH:
        raise _bad_path(name, f"more than {MAX_DEPTH} levels deep")
    for part in parts:
        if part == "..":
            raise _bad_path(name, "'..' is not allowed")
        if len(part) > MAX_COMPONENT_CHARS:
            raise _bad_path(name, f"a component is longer than {MAX_COMPONENT_CHARS} characters")
        if part != part.strip() or part.endswith("."):
            raise _bad_path(name, "a component starts or ends with a space, or ends with '.'")
        if part.split(".")[0].upper() in _WINDOWS_DEVICES:
            raise _bad_path(name, "a component is a reserved device name")
    return "/".join(parts)


def is_root(name: str) -> bool:
    """Whether a directory entry names the folder itself (``.`` or ``./``, as ``tar -C dir .``
    writes it); such an entry is skipped, never joined to a path."""
    return bool(name) and not name.startswith("/") and all(p in ("", ".") for p in name.split("/"))


def is_pickle_name(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)


def pickle_refused(path: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{path!r}: pickle-based weights ({', '.join(PICKLE_SUFFIXES)}) can run code when "
        "loaded and are refused; convert them to safetensors",
        param="file",
        code="pickle_weights",
    )


# -- manifest -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FolderFile:
    """One file of a folder: its normal-form path, its blob and its size."""

    path: str
    digest: str
    size: int


def manifest_bytes(files: Iterable[FolderFile]) -> bytes:
    entries = [
        {"path": f.path, "digest": f.digest, "size": f.size}
        for f in sorted(files, key=lambda f: f.path)
    ]
    body = {"format": MANIFEST_FORMAT, "files": entries}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def parse_manifest(data: bytes) -> list[FolderFile]:
    """The files a manifest lists, each path and digest re-validated (a manifest is read back
    from disk, so it is checked like any other input)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidRequestError("folder manifest is too large", code="invalid_manifest")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidRequestError("folder manifest is not JSON", code="invalid_manifest") from None
    if not isinstance(body, dict) or body.get("format") != MANIFEST_FORMAT:
        raise InvalidRequestError("not a folder manifest", code="invalid_manifest")
    entries = body.get("files")
    if not isinstance(entries, list):
        raise InvalidRequestError("folder manifest has no file list", code="invalid_manifest")
    files: list[FolderFile] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise InvalidRequestError("bad folder manifest entry", code="invalid_manifest")
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidRequestError("bad size in folder manifest", code="invalid_manifest")
        path = member_path(entry["path"])
        if path != entry["path"]:
            raise InvalidRequestError("path not in normal form", code="invalid_manifest")
        files.append(FolderFile(path, normalize_digest(entry.get("digest", "")), size))
    check_layout(f.path for f in files)
    return files


def check_layout(paths: Iterable[str]) -> None:
    """Refuse two files that one file system could not hold side by side: the same path
    (ignoring case, for case-insensitive disks) or a file where another needs a directory."""
    LayoutChecker().add_all(paths)


class LayoutChecker:
    """Accumulates normal-form paths and refuses duplicates and file/directory clashes."""

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._dirs: set[str] = set()

    def add_all(self, paths: Iterable[str]) -> None:
        for path in paths:
            self.add_file(path)

    def add_file(self, path: str) -> None:
        key = path.casefold()
        if key in self._files:
            raise _bad_path(path, "the folder already has a file of this name")
        if key in self._dirs:
            raise _bad_path(path, "the folder has a directory of this name")
        self._add_parents(path, key)
        self._files.add(key)

    def add_dir(self, path: str) -> None:
        key = path.casefold()
        if key in self._files:
            raise _bad_path(path, "the folder has a file of this name")
        self._add_parents(path, key)
        self._dirs.add(key)

    def _add_parents(self, path: str, key: str) -> None:
        parts = key.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in self._files:
                raise _bad_path(path, "a parent directory is a file of the folder")
            self._dirs.add(parent)


# -- tar form -----------------------------------------------------------------------------------


def tar_header(path: str, size: int) -> bytes:
    """The header block(s) of one regular file (PAX extensions only where ustar falls short)."""
    info = tarfile.TarInfo(path)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _padding(size: int) -> int:
    return -size % _BLOCK


def tar_length(files: Iterable[tuple[str, int]]) -> int:
    """The exact byte length of :func:`tar_chunks` over files of these paths and sizes."""
    return sum(len(tar_header(p, s)) + s + _padding(s) for p, s in files) + 2 * _BLOCK


def tar_chunks(files: Sequence[tuple[str, int, Callable[[], BinaryIO]]]) -> Iterator[bytes]:
    """A tar archive of ``(path, size, open)`` files, generated as it is read (nothing is held
    whole). Raises ``OSError`` if a file does not have the size it was announced with."""
    for path, size, opener in files:
        yield tar_header(path, size)
        left = size
        with opener() as f:
            while left:
                chunk = f.read(min(left, _READ_CHUNK))
                if not chunk:
                    raise OSError(f"{path} shrank while it was being sent")
                left -= len(chunk)
                yield chunk
            if f.read(1):
                raise OSError(f"{path} grew while it was being sent")
        if _padding(size):
            yield bytes(_padding(size))
    yield bytes(2 * _BLOCK)


def extract_tar(
    stream: Readable, directory: Path, *, max_members: int = 100_000
) -> list[FolderFile]:
    """Write the files of a folder's tar stream under the empty ``directory``, each at its
    normal-form path (the names are checked like an upload's; links and special files are
    refused). Returns the files with their sha256 digests, for :func:`manifest_bytes`."""
    layout = LayoutChecker()
    files: list[FolderFile] = []
    for count, member in enumerate(TarReader(stream).members(), start=1):
        if count > max_members:
            raise RequestTooLargeError(f"the archive has more than {max_members} members")
        if member.kind == "dir":
            if not is_root(member.name):
                layout.add_dir(member_path(member.name))
            continue
        path = member_path(member.name)
        layout.add_file(path)
        target = directory.joinpath(*path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        with target.open("xb") as f:
            for chunk in member.chunks():
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        files.append(FolderFile(path, f"sha256:{digest.hexdigest()}", size))
    return files
