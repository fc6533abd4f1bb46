"""Readers for untrusted tar and zip archives that yield members as streams of bytes.

Nothing is extracted: each member comes with its raw name (for :func:`folder.member_path` to
judge), what it is, its declared size and an iterator over its bytes. Links, devices, fifos,
sparse and encrypted members are refused here. Every length an archive declares about itself
(extended tar headers, the zip central directory) is bounded *before* it is read, so a hostile
archive cannot make the reader allocate much; member data is never buffered whole.

Callers still count the bytes they receive: a zip member's declared size may lie, and only
the caller knows its caps.
"""

from __future__ import annotations

import gzip
import lzma
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Final, Literal, Protocol

from lmaas.errors import InvalidRequestError

_BLOCK: Final = 512
_CHUNK: Final = 1 << 20
MAX_EXTENDED_HEADER: Final = 1 << 20
MAX_ZIP_DIRECTORY_ENTRY: Final = 4096
_GZIP_MAGIC: Final = b"\x1f\x8b"

Kind = Literal["file", "dir"]


@dataclass(frozen=True, slots=True)
class Member:
    """One archive member: ``name`` is unvalidated; ``chunks()`` may be called at most once."""

    name: str
    kind: Kind
    size: int
    chunks: Callable[[], Iterator[bytes]]


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Peekable(Readable, Protocol):
    def peek(self, size: int = 0, /) -> bytes: ...


class Seekable(Readable, Protocol):
    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...

    def seekable(self) -> bool: ...


def refused(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param="file", code="invalid_archive")


def _read_exact(stream: Readable, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise refused("the archive is truncated")
        data += chunk
    return bytes(data)


# -- tar ----------------------------------------------------------------------------------------


class _CountingReader:
    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self.bytes_read = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size)
        self.bytes_read += len(data)
        return data


class Gunzip:
    """A streaming gunzip whose decoding errors are refusals (its input's errors pass).
    ``compressed_bytes`` is how much of its input it has read."""

    def __init__(self, stream: Peekable) -> None:
        self._input = _CountingReader(stream)
        self._gzip: gzip.GzipFile = gzip.GzipFile(fileobj=self._input, mode="rb")  # type: ignore[call-overload]

    @property
    def compressed_bytes(self) -> int:
        return self._input.bytes_read

    def read(self, size: int = -1) -> bytes:
        try:
            return self._gzip.read(size)
        except (gzip.BadGzipFile, zlib.error, EOFError):
            raise refused("corrupt or truncated gzip stream") from None


def open_maybe_gzip(stream: Peekable) -> Readable:
    """``stream`` itself, or a streaming gunzip of it when it starts with the gzip magic."""
    return Gunzip(stream) if stream.peek(2)[:2] == _GZIP_MAGIC else stream


def _number(field: bytes, what: str) -> int:
    if field[:1] == b"\x80":  # GNU base-256, used for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    if field[:1] and field[0] & 0x80:
        raise refused(f"negative or oversized {what} in a tar header")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise refused(f"bad {what} in a tar header")
    return int(text, 8)


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum(struct.unpack("148b", block[:148])) + 8 * 32
    signed += sum(struct.unpack("356b", block[156:]))
    return stored in (unsigned, signed)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise refused(f"the {what} in a tar header is not UTF-8") from None


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise refused("malformed PAX header")
        length = int(digits)
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise refused("malformed PAX header")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise refused("malformed PAX header")
        records[_text(key, "PAX key")] = _text(value, "PAX value")
        pos = end
    return records


_REFUSED_TYPES: Final = {
    b"1": "hard links are not allowed",
    b"2": "symbolic links are not allowed",
    b"3": "character devices are not allowed",
    b"4": "block devices are not allowed",
    b"6": "fifos are not allowed",
    b"S": "sparse files are not allowed",
    b"M": "multi-volume archives are not allowed",
    b"V": "volume headers are not allowed",
}


class TarReader:
    """Iterate the members of a tar stream (plain; wrap it with :func:`open_maybe_gzip`)."""

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self._left = 0  # data bytes of the current member not yet read
        self._pad = 0

    def members(self) -> Iterator[Member]:  # noqa: C901 - one branch per tar member kind
        path: str | None = None
        size: int | None = None
        while True:
            self._finish_member()
            block = self._stream.read(_BLOCK)
            if len(block) < _BLOCK:
                block += self._rest(_BLOCK - len(block)) if block else b""
            if not block:
                return  # no end-of-archive blocks: accepted, like GNU tar does
            if block == bytes(_BLOCK):
                return
            if not _checksum_ok(block):
                raise refused("not a tar archive (bad header checksum)")
            kind = block[156:157]
            declared = _number(block[124:136], "size")
            if kind in (b"x", b"g", b"L", b"K"):
                data = self._extended(declared)
                if kind == b"x":
                    records = _pax_records(data)
                    if any(k.startswith("GNU.sparse") for k in records):
                        raise refused("sparse files are not allowed")
                    path = records.get("path", path)
                    if "size" in records:
                        if not records["size"].isdigit():
                            raise refused("bad size in a PAX header")
                        size = int(records["size"])
                elif kind == b"L":
                    path = _text(data.split(b"\0", 1)[0], "long name")
                continue  # global headers and GNU long link names change nothing we use
            name = path if path is not None else self._header_name(block)
            if size is not None:
                declared = size
            path = size = None
            yield self._member(kind, name, declared)

    def _member(self, kind: bytes, name: str, size: int) -> Member:
        if kind in _REFUSED_TYPES:
            raise refused(f"{name[:100]!r}: {_REFUSED_TYPES[kind]}")
        if kind not in (b"0", b"\0", b"7", b"5"):
            raise refused(f"{name[:100]!r}: unsupported tar member type {kind!r}")
        self._left, self._pad = size, -size % _BLOCK
        is_dir = kind == b"5" or (kind == b"\0" and name.endswith("/"))
        return Member(name, "dir" if is_dir else "file", size, self._data)

    @staticmethod
    def _header_name(block: bytes) -> str:
        name = block[0:100].split(b"\0", 1)[0]
        if block[257:263] == b"ustar\0":  # POSIX ustar: a prefix holds the leading directories
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        return _text(name, "name")

    def _extended(self, size: int) -> bytes:
        if size > MAX_EXTENDED_HEADER:
            raise refused(f"extended tar header larger than {MAX_EXTENDED_HEADER} bytes")
        data = _read_exact(self._stream, size)
        _read_exact(self._stream, -size % _BLOCK)
        return data

    def _rest(self, n: int) -> bytes:
        return _read_exact(self._stream, n)

    def _data(self) -> Iterator[bytes]:
        while self._left:
            chunk = self._stream.read(min(self._left, _CHUNK))
            if not chunk:
                raise refused("the archive is truncated")
            self._left -= len(chunk)
            yield chunk

    def _finish_member(self) -> None:
        """Skip what the caller did not read of the previous member, and its padding."""
        for _ in self._data():
            pass
        if self._pad:
            _read_exact(self._stream, self._pad)
            self._pad = 0


# -- zip ----------------------------------------------------------------------------------------


class CountingFile:
    """A seekable binary file that counts the bytes read through it (what a zip's members
    really take, however their headers describe them)."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.bytes_read = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._file.read(size)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = 0, /) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
# What reading a member can raise on corrupt or hostile content.
_ZIP_ERRORS: Final = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OSError,
    struct.error,
)


def _zip_directory_bounds(file: Seekable) -> tuple[int, int]:
    """(entries, bytes) of the central directory, read from the end records the way
    ``zipfile`` finds them, before ``zipfile`` loads the directory into memory."""
    size = file.seek(0, 2)
    if size < _EOCD.size:
        raise refused("not a zip archive")
    tail_len = min(size, _EOCD.size + 0xFFFF + _ZIP64_LOCATOR.size)
    file.seek(size - tail_len)
    tail = file.read(tail_len)
    pos = len(tail) - _EOCD.size
    if not (tail[pos : pos + 4] == b"PK\x05\x06" and tail[-2:] == b"\0\0"):
        pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + _EOCD.size > len(tail):
        raise refused("not a zip archive")
    _, _, _, _, entries, cd_size, _, _ = _EOCD.unpack_from(tail, pos)
    locator = pos - _ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        _, _, offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator)
        if offset > size - _ZIP64_EOCD.size:
            raise refused("corrupt zip64 end record")
        file.seek(offset)
        record = file.read(_ZIP64_EOCD.size)
        if record[:4] != b"PK\x06\x06":
            raise refused("corrupt zip64 end record")
        fields = _ZIP64_EOCD.unpack(record)
        entries, cd_size = fields[7], fields[8]
    return entries, cd_size


def zip_members(file: Seekable, *, max_members: int) -> Iterator[Member]:
    """The members of a zip archive in a seekable file, in directory order."""
    entries, cd_size = _zip_directory_bounds(file)
    if entries > max_members:
        raise refused(f"the archive has more than {max_members} members")
    if cd_size > (max_members + 1) * MAX_ZIP_DIRECTORY_ENTRY:
        raise refused("the zip central directory is implausibly large")
    try:
        archive = zipfile.ZipFile(file)
    except _ZIP_ERRORS as exc:
        raise refused(f"not a valid zip archive ({type(exc).__name__})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > max_members:
            raise refused(f"the archive has more than {max_members} members")
        for info in infos:
            yield _zip_member(archive, info)


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    # orig_filename keeps what zipfile cuts at a NUL byte, so a NUL is seen and refused.
    name = info.orig_filename
    if info.flag_bits & 0x1:
        raise refused(f"{name[:100]!r}: encrypted members are not allowed")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise refused(f"{name[:100]!r}: symbolic links are not allowed")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise refused(f"{name[:100]!r}: only files and directories are allowed")
    is_dir = kind == stat.S_IFDIR or name.endswith("/")

    def chunks() -> Iterator[bytes]:
        try:
            with archive.open(info) as f:
                while chunk := f.read(_CHUNK):
                    yield chunk
        except _ZIP_ERRORS as exc:
            raise refused(f"{name[:100]!r}: corrupt zip member ({type(exc).__name__})") from None

    return Member(name, "dir" if is_dir else "file", info.file_size, chunks)
