"""Hugging Face model folders into blobs: from a tar or zip archive, a multipart upload or a
directory on the server.

:class:`FolderBuilder` is the one gate every file passes: its name is brought to normal form
(:func:`folder.member_path`), pickle weights are refused, the member count and the per-file and
total sizes are capped on the declared size *and* on the bytes actually received, a compressed
archive may not expand more than a set ratio of the compressed bytes read, and the bytes stream
straight into a blob (never to a path the client chose, never held whole in memory).
:meth:`FolderBuilder.finish` then checks the folder as a whole (``config.json``, safetensors
headers) and writes its manifest. Each blob is claimed through the builder's ``claim`` callback
(the upload's lease, :mod:`lmaas.store.refs`), whose release deletes whatever a failed upload
leaves that nothing else uses.

Everything here blocks; the store runs it in a worker thread.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from lmaas.errors import InvalidRequestError, RequestTooLargeError
from lmaas.store.archive import (
    CountingFile,
    Gunzip,
    Member,
    Peekable,
    Readable,
    TarReader,
    open_maybe_gzip,
    refused,
    zip_members,
)
from lmaas.store.blobs import BlobInfo, BlobStore, BlobWriter, Claim
from lmaas.store.folder import (
    MAX_DEPTH,
    MAX_MANIFEST_BYTES,
    FolderFile,
    LayoutChecker,
    is_pickle_name,
    is_root,
    manifest_bytes,
    member_path,
    pickle_refused,
)
from lmaas.store.safetensors_header import read_header

MAX_JSON_BYTES: Final = 16 << 20
MAX_TRAILING_BYTES: Final = 1 << 20
_CHUNK: Final = 1 << 20
# The expansion ratio is only judged past this many unpacked bytes: small files (JSON, a
# vocabulary) may compress very well, and a few MiB is harmless whatever it came from.
RATIO_FREE_BYTES: Final = 8 << 20
# Written by `git clone` and `huggingface-cli download --local-dir`, not part of a model.
_SKIPPED_TOP_DIRS: Final = frozenset({".git", ".cache"})


@dataclass(frozen=True, slots=True)
class FolderLimits:
    max_members: int
    max_member_bytes: int
    max_total_bytes: int
    # Unpacked bytes per compressed byte read (None: no limit, e.g. for shipped models).
    max_expansion_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class FolderFacts:
    """The catalog fields read from a folder."""

    architecture: str | None
    parameter_count: int
    context_length: int | None
    quantization: str | None


@dataclass(frozen=True, slots=True)
class FolderContent:
    """A checked folder: its manifest blob, its files and what was read from them."""

    manifest: BlobInfo
    files: tuple[FolderFile, ...]
    size_bytes: int
    facts: FolderFacts


def _too_many(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"the folder has more than {limit} files and directories (limits.max_archive_members)",
        code="too_many_files",
    )


def _bomb(ratio: float, compressed: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"the archive unpacks to more than {ratio:g} times the {compressed} compressed bytes "
        "read so far, which model files do not: refused as a decompression bomb "
        "(limits.max_expansion_ratio)",
        code="expansion_ratio_exceeded",
    )


class FileSink:
    """One file being received: :meth:`write` its bytes, then :meth:`close` (or :meth:`abort`,
    which is a no-op after a close)."""

    def __init__(
        self,
        path: str,
        writer: BlobWriter,
        cap: str,
        on_write: Callable[[int], None],
        on_close: Callable[[str, BlobInfo], None],
    ) -> None:
        self.path, self._writer, self._cap = path, writer, cap
        self._on_write, self._on_close = on_write, on_close

    def write(self, chunk: bytes) -> None:
        try:
            self._writer.append(chunk)
        except RequestTooLargeError:
            raise RequestTooLargeError(
                f"{self.path!r} is larger than {self._cap}", code="file_too_large"
            ) from None
        self._on_write(len(chunk))

    def close(self) -> None:
        self._on_close(self.path, self._writer.commit())

    def abort(self) -> None:
        self._writer.abort()


class FolderBuilder:
    """Receives one folder's files into blobs (see the module docstring); not thread-safe."""

    def __init__(self, blobs: BlobStore, limits: FolderLimits, claim: Claim | None = None) -> None:
        self._blobs = blobs
        self.limits = limits
        self._claim = claim
        self._layout = LayoutChecker()
        self._members = 0
        self._total = 0
        self._unpacked = 0  # bytes written, the file being received included
        self._compressed: Callable[[], int] | None = None
        self._files: list[FolderFile] = []

    def watch_compression(self, compressed_bytes: Callable[[], int]) -> None:
        """Hold the unpacked bytes to ``limits.max_expansion_ratio`` times what
        ``compressed_bytes()`` says has been read of the compressed archive."""
        self._compressed = compressed_bytes

    def _wrote(self, n: int) -> None:
        self._unpacked += n
        ratio = self.limits.max_expansion_ratio
        if ratio is None or self._compressed is None or self._unpacked <= RATIO_FREE_BYTES:
            return
        compressed = self._compressed()
        if self._unpacked > ratio * compressed:
            raise _bomb(ratio, compressed)

    def _count_member(self) -> None:
        self._members += 1
        if self._members > self.limits.max_members:
            raise _too_many(self.limits.max_members)

    def add_dir(self, name: str) -> None:
        self._count_member()
        if not is_root(name):
            self._layout.add_dir(member_path(name))

    def open_file(self, name: str, declared_size: int | None = None) -> FileSink:
        """Start a file; refused at once for a bad or duplicate name, a pickle suffix, too many
        files or a declared size over the caps."""
        path = member_path(name)
        if is_pickle_name(path):
            raise pickle_refused(path)
        self._count_member()
        self._layout.add_file(path)
        left = self.limits.max_total_bytes - self._total
        if left < self.limits.max_member_bytes:
            budget, cap = left, f"what is left of limits.max_upload_bytes ({left} bytes)"
        else:
            budget = self.limits.max_member_bytes
            cap = f"limits.max_member_bytes ({budget} bytes)"
        if declared_size is not None and declared_size > budget:
            raise RequestTooLargeError(f"{path!r} is larger than {cap}", code="file_too_large")
        writer = self._blobs.writer(budget, self._claim)
        return FileSink(path, writer, cap, self._wrote, self._record)

    def add_file(self, name: str, chunks: Iterable[bytes], declared_size: int | None) -> None:
        sink = self.open_file(name, declared_size)
        try:
            for chunk in chunks:
                sink.write(chunk)
            sink.close()
        finally:
            sink.abort()

    def add_member(self, member: Member) -> None:
        if member.kind == "dir":
            self.add_dir(member.name)
        else:
            self.add_file(member.name, member.chunks(), member.size)

    def _record(self, path: str, blob: BlobInfo) -> None:
        self._total += blob.size
        self._files.append(FolderFile(path, blob.digest, blob.size))

    def finish(self) -> FolderContent:
        """Check the folder and store its manifest."""
        facts = describe_folder(self._blobs, self._files)
        manifest = self._blobs.write([manifest_bytes(self._files)], MAX_MANIFEST_BYTES, self._claim)
        return FolderContent(
            manifest=manifest,
            files=tuple(sorted(self._files, key=lambda f: f.path)),
            size_bytes=self._total,
            facts=facts,
        )


# -- sources ------------------------------------------------------------------------------------


def _drain(stream: Readable, what: str) -> None:
    """Read to the end (a gzip stream checks its CRC there), refusing much trailing data."""
    left = MAX_TRAILING_BYTES
    while chunk := stream.read(min(_CHUNK, left + 1)):
        left -= len(chunk)
        if left < 0:
            raise refused(f"unexpected data after the end of the {what}")


def add_tar(builder: FolderBuilder, stream: Peekable) -> None:
    """Every member of a tar or gzip-compressed tar stream."""
    tar = open_maybe_gzip(stream)
    if isinstance(tar, Gunzip):
        builder.watch_compression(lambda: tar.compressed_bytes)
    for member in TarReader(tar).members():
        builder.add_member(member)
    _drain(tar, "tar archive")


def add_zip(builder: FolderBuilder, stream: BinaryIO, spool_dir: Path) -> None:
    """Every member of a zip archive; a stream that cannot seek is first spooled to an
    anonymous temporary file in ``spool_dir`` (a zip's directory is at its end)."""
    if stream.seekable():
        _add_zip_members(builder, stream)
        return
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        shutil.copyfileobj(stream, spool, _CHUNK)
        _add_zip_members(builder, spool)


def _add_zip_members(builder: FolderBuilder, file: BinaryIO) -> None:
    counted = CountingFile(file)  # what the members' decompressors read, to judge the ratio
    builder.watch_compression(lambda: counted.bytes_read)
    for member in zip_members(counted, max_members=builder.limits.max_members):
        builder.add_member(member)


def add_directory(builder: FolderBuilder, root: Path) -> None:
    """Every file under ``root`` (``root`` itself may be a link to the directory). Any symbolic
    link inside is refused, to a file or a directory alike, so an import reads only what lies
    in the directory it was given; so is anything that is neither a regular file nor a
    directory. ``.git`` and ``.cache`` at the top are skipped."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        raise InvalidRequestError(
            f"{root} is not a directory on the server", param="path"
        ) from None
    try:
        _add_tree(builder, fd, "", 0)
    finally:
        os.close(fd)


def _add_tree(builder: FolderBuilder, dir_fd: int, prefix: str, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise InvalidRequestError(f"{prefix!r} is nested too deep", param="path")
    with os.scandir(dir_fd) as scan:
        names = sorted(entry.name for entry in scan)
    for name in names:
        relative = f"{prefix}{name}"
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError as exc:  # gone since it was listed
            raise _unreadable(relative, exc) from None
        if stat.S_ISLNK(mode):
            raise _link_refused(relative)
        if stat.S_ISDIR(mode):
            if not prefix and name in _SKIPPED_TOP_DIRS:
                continue
            builder.add_dir(relative)
            child = _open_no_follow(name, dir_fd, relative, os.O_DIRECTORY)
            try:
                _add_tree(builder, child, f"{relative}/", depth + 1)
            finally:
                os.close(child)
        elif stat.S_ISREG(mode):
            # O_NONBLOCK: a fifo put there since it was listed cannot block the open.
            fd = _open_no_follow(name, dir_fd, relative, os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise _not_regular(relative)
                builder.add_file(relative, iter_chunks(f), info.st_size)
        else:
            raise _not_regular(relative)


def _open_no_follow(name: str, dir_fd: int, relative: str, flags: int) -> int:
    """Open an entry that was not a link when it was listed, refusing one put there since."""
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # what O_NOFOLLOW gives for a link
            raise _link_refused(relative) from None
        raise _unreadable(relative, exc) from None


def _unreadable(relative: str, exc: OSError) -> InvalidRequestError:
    return InvalidRequestError(f"{relative!r} could not be read ({exc.strerror})", param="path")


def _link_refused(relative: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{relative!r} is a symbolic link; links are refused so an import reads only the "
        "directory it names (copy the files in, e.g. with `cp -rL`, or download with "
        "`huggingface-cli download --local-dir`)",
        param="path",
        code="symlink_refused",
    )


def _not_regular(relative: str) -> InvalidRequestError:
    return InvalidRequestError(f"{relative!r} is not a regular file or directory", param="path")


class _MultipartHandler:
    """python-multipart callbacks: each part is one file whose ``filename`` is its path."""

    def __init__(self, builder: FolderBuilder) -> None:
        self._builder = builder
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, str] = {}
        self._sink: FileSink | None = None
        self.ended = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._headers.clear,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        params = parse_disposition(self._headers.get("content-disposition", ""))
        filename = params.get("filename")
        if not filename:
            raise _bad_multipart(
                "every part must be a file whose filename is its path in the folder"
            )
        self._sink = self._builder.open_file(filename)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.write(data[start:end])

    def _part_end(self) -> None:
        if self._sink is not None:
            sink, self._sink = self._sink, None
            try:
                sink.close()
            finally:
                sink.abort()

    def _end(self) -> None:
        self.ended = True

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()


def add_multipart(builder: FolderBuilder, stream: Readable, boundary: str) -> None:
    """Every file part of a ``multipart/form-data`` body."""
    handler = _MultipartHandler(builder)
    try:
        parser = MultipartParser(boundary.encode("latin-1"), handler.callbacks())  # type: ignore[arg-type]
        while chunk := stream.read(_CHUNK):
            parser.write(chunk)
            if handler.ended:
                break
        parser.finalize()
    except (MultipartParseError, ValueError) as exc:
        raise _bad_multipart(f"malformed multipart body: {str(exc)[:200]}") from None
    finally:
        handler.abort()
    if not handler.ended:
        raise _bad_multipart("the multipart body ended before its closing boundary")
    _drain(stream, "multipart body")


def parse_disposition(value: str) -> dict[str, str]:
    """The parameters of a ``Content-Disposition`` header (quoted strings unescaped).
    ``filename*`` (RFC 5987) is refused rather than decoded: names travel as plain text."""
    params: dict[str, str] = {}
    rest = value.partition(";")[2]
    while rest := rest.lstrip(" \t;"):
        key, eq, rest = rest.partition("=")
        key = key.strip().lower()
        if not eq or not key or any(c in key for c in ' \t;"'):
            raise _bad_multipart("malformed Content-Disposition header")
        if key.endswith("*"):
            raise _bad_multipart("send file names as filename=, not encoded as filename*=")
        rest = rest.lstrip(" \t")
        if rest.startswith('"'):
            text, rest = _quoted(rest)
            if rest.strip(" \t") and not rest.lstrip(" \t").startswith(";"):
                raise _bad_multipart("malformed Content-Disposition header")
        else:
            text, _, rest = rest.partition(";")
            text = text.strip(" \t")
        params[key] = text
    return params


def _bad_multipart(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param="file", code="invalid_multipart")


def _quoted(text: str) -> tuple[str, str]:
    """A quoted string at the start of ``text`` (unescaped) and what follows it."""
    out: list[str] = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            return "".join(out), text[i + 1 :]
        else:
            out.append(ch)
            i += 1
    raise _bad_multipart("unterminated quoted string in Content-Disposition")


# -- checking the folder ------------------------------------------------------------------------


def _read_json(blobs: BlobStore, file: FolderFile) -> Any:
    if file.size > MAX_JSON_BYTES:
        raise InvalidRequestError(f"{file.path!r} is larger than {MAX_JSON_BYTES} bytes")
    with blobs.open(file.digest) as f:
        data = f.read(MAX_JSON_BYTES + 1)
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidRequestError(
            f"{file.path!r} is not valid JSON", param="file", code="invalid_model_file"
        ) from None


def _config_path(blobs: BlobStore, by_path: dict[str, FolderFile]) -> str | None:
    """``config.json`` at the top, else in the folder sentence-transformers' ``modules.json``
    names for its Transformer module."""
    if "config.json" in by_path or "modules.json" not in by_path:
        return "config.json" if "config.json" in by_path else None
    modules = _read_json(blobs, by_path["modules.json"])
    if not isinstance(modules, list):
        raise InvalidRequestError("modules.json is not a JSON list", code="invalid_model_file")
    for module in modules:
        if isinstance(module, dict) and str(module.get("type", "")).endswith("Transformer"):
            folder = module.get("path")
            if isinstance(folder, str) and folder:
                return f"{member_path(folder)}/config.json"
            return "config.json"
    return None


def describe_folder(blobs: BlobStore, files: list[FolderFile]) -> FolderFacts:
    """Check a received folder and read its catalog fields."""
    by_path = {f.path: f for f in files}
    config_path = _config_path(blobs, by_path)
    if config_path is None or config_path not in by_path:
        raise InvalidRequestError(
            "a Hugging Face folder needs config.json at its top (or, for sentence-transformers, "
            "in the Transformer module's folder named by modules.json)",
            param="file",
            code="invalid_model_folder",
        )
    config = _read_json(blobs, by_path[config_path])
    if not isinstance(config, dict):
        raise InvalidRequestError(
            f"{config_path} is not a JSON object", param="file", code="invalid_model_folder"
        )
    weights = [f for f in files if f.path.lower().endswith(".safetensors")]
    if not weights:
        raise InvalidRequestError(
            "the folder has no *.safetensors weights", param="file", code="invalid_model_folder"
        )
    parameters = 0
    dtypes: set[str] = set()
    for file in weights:
        with blobs.open(file.digest) as f:
            summary = read_header(f, file.size, file.path)
        parameters += summary.parameter_count
        dtypes |= summary.dtypes
    _check_index(blobs, by_path)
    floats = {d for d in dtypes if d.startswith(("F", "BF"))}
    return FolderFacts(
        architecture=_architecture(config),
        parameter_count=parameters,
        context_length=_context_length(config),
        # Integer tensors beside float weights are buffers (position ids), not the precision.
        quantization=",".join(sorted(floats or dtypes))[:32] or None,
    )


def _check_index(blobs: BlobStore, by_path: dict[str, FolderFile]) -> None:
    """A sharded checkpoint's index must name shards the folder has."""
    for path, file in by_path.items():
        if not path.endswith(".safetensors.index.json"):
            continue
        index = _read_json(blobs, file)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise InvalidRequestError(f"{path!r} has no weight_map", code="invalid_model_folder")
        base = path.rpartition("/")[0]
        for shard in set(weight_map.values()):
            if not isinstance(shard, str):
                raise InvalidRequestError(f"{path!r}: bad shard name", code="invalid_model_folder")
            name = member_path(f"{base}/{shard}" if base else shard)
            if name not in by_path:
                raise InvalidRequestError(
                    f"{path!r} names {shard[:100]!r}, which the folder does not have",
                    code="invalid_model_folder",
                )


def _architecture(config: dict[str, Any]) -> str | None:
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0][:128]
    model_type = config.get("model_type")
    return model_type[:128] if isinstance(model_type, str) else None


def _context_length(config: dict[str, Any]) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 63:
            return value
    return None


def iter_chunks(stream: Readable) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk
