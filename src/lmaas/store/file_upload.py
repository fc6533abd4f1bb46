"""One ``multipart/form-data`` upload of the Files API, streamed into a blob.

The body holds a ``purpose`` field and one ``file`` part (other small fields, such as the
``expires_after`` the SDK may send, are read and ignored). The file's bytes go straight to a
:class:`~lmaas.store.blobs.BlobWriter` as they arrive, never held whole in memory. When the
``purpose`` came first (the ``openai`` SDK sends it first), the JSONL check runs on the same
bytes as they stream in and a bad file is refused before anything is committed; otherwise the
committed blob is read again and checked once the purpose is known (the caller's lease
release then deletes it unless something else uses the same bytes).

The client's filename is metadata only: its last path component, at most
:data:`MAX_FILENAME` characters, control characters refused. It never names anything on disk.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Final

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from lmaas.errors import InvalidRequestError, RequestTooLargeError
from lmaas.store.archive import Readable
from lmaas.store.blobs import BlobInfo, BlobStore, BlobWriter, Claim
from lmaas.store.hf import parse_disposition
from lmaas.store.jsonl_checks import JSONL_PURPOSES, JsonlChecker, Purpose, validate_purpose

MAX_FILENAME: Final = 255
DEFAULT_FILENAME: Final = "upload"
# Room for the multipart framing and the small fields around the file.
MULTIPART_OVERHEAD: Final = 1 << 20
_MAX_FIELD_BYTES: Final = 4096
_MAX_FIELDS: Final = 16
_MAX_TRAILING_BYTES: Final = 4096
_CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class FileLimits:
    max_bytes: int
    max_line_bytes: int


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """A checked upload whose bytes are committed as ``blob`` (and claimed)."""

    purpose: str
    filename: str
    blob: BlobInfo


def too_large(limits: FileLimits) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"the file exceeds the limit of {limits.max_bytes} bytes (files.max_bytes)",
        param="file",
        code="file_too_large",
    )


def clean_filename(raw: str) -> str:
    """The name kept for a client's filename: what follows its last ``/``, bounded, with no
    control characters (400 otherwise)."""
    name = raw.rpartition("/")[2] or DEFAULT_FILENAME
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InvalidRequestError(
            "the filename must not hold control characters", param="file", code="invalid_filename"
        )
    if len(name) > MAX_FILENAME:
        raise InvalidRequestError(
            f"the filename is longer than {MAX_FILENAME} characters",
            param="file",
            code="invalid_filename",
        )
    return name


def _bad_multipart(message: str, param: str = "file") -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code="invalid_multipart")


class _FilePart:
    """The ``file`` part being received: its blob writer and, once the purpose is known
    before its bytes, the JSONL check fed with the same bytes."""

    def __init__(self, writer: BlobWriter, filename: str, limits: FileLimits) -> None:
        self.writer = writer
        self.filename = filename
        self.limits = limits
        self.checker: JsonlChecker | None = None
        self.checked = False  # the check saw every byte (or the purpose needs none)

    def start_check(self, purpose: Purpose) -> None:
        self.checked = True
        if purpose in JSONL_PURPOSES:
            self.checker = JsonlChecker(purpose, max_line_bytes=self.limits.max_line_bytes)

    def write(self, data: bytes) -> None:
        if self.writer.size + len(data) > self.limits.max_bytes:
            raise too_large(self.limits)
        self.writer.append(data)
        if self.checker is not None:
            self.checker.feed(data)
            if self.checker.stopped:  # enough bad lines to report: refuse now
                self.checker.finish()


class _UploadHandler:
    """python-multipart callbacks for the parts of one upload."""

    def __init__(self, blobs: BlobStore, claim: Claim, limits: FileLimits) -> None:
        self._blobs = blobs
        self._claim = claim
        self._limits = limits
        self._field_name = bytearray()
        self._field_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._current: str | None = None  # name of the part being read
        self._value = bytearray()
        self._fields = 0
        self.purpose: Purpose | None = None
        self.file: _FilePart | None = None
        self.file_done = False
        self.ended = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._field_name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._field_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers.clear()
        self._value.clear()
        self._current = None

    def _header_end(self) -> None:
        name = self._field_name.decode("latin-1").strip().lower()
        self._headers[name] = bytes(self._field_value).strip()
        self._field_name.clear()
        self._field_value.clear()

    def _headers_finished(self) -> None:
        raw = self._headers.get("content-disposition", b"")
        try:
            params = parse_disposition(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad_multipart("part headers must be UTF-8") from None
        name = params.get("name", "")
        self._current = name
        if name != "file":
            self._fields += 1
            if self._fields > _MAX_FIELDS:
                raise _bad_multipart(f"more than {_MAX_FIELDS} form fields", param=name[:64])
            return
        if self.file is not None or self.file_done:
            raise _bad_multipart("send exactly one file part")
        filename = clean_filename(params.get("filename", DEFAULT_FILENAME))
        self.file = _FilePart(
            self._blobs.writer(self._limits.max_bytes, self._claim), filename, self._limits
        )
        if self.purpose is not None:
            self.file.start_check(self.purpose)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._current == "file":
            assert self.file is not None
            self.file.write(data[start:end])
            return
        if len(self._value) + end - start > _MAX_FIELD_BYTES:
            raise _bad_multipart(
                f"form field {(self._current or '')[:64]!r} is longer than {_MAX_FIELD_BYTES} "
                "bytes",
                param=(self._current or "")[:64],
            )
        self._value += data[start:end]

    def _part_end(self) -> None:
        if self._current == "file":
            self.file_done = True
        elif self._current == "purpose":
            try:
                value = self._value.decode("utf-8")
            except UnicodeDecodeError:
                value = "(not UTF-8)"
            # A purpose after the file: the stored bytes are checked once the body ended.
            self.purpose = validate_purpose(value.strip())
        self._current = None

    def _end(self) -> None:
        self.ended = True

    def abort(self) -> None:
        if self.file is not None:
            self.file.writer.abort()


def receive_file(
    stream: Readable, boundary: str, blobs: BlobStore, claim: Claim, limits: FileLimits
) -> ReceivedFile:
    """Read one upload's multipart body from ``stream`` (blocking) into a committed, claimed
    blob, checked for its purpose. Raises ``InvalidRequestError`` (400) for a bad body, a bad
    purpose or bad JSONL lines, ``RequestTooLargeError`` (413) beyond ``limits.max_bytes``."""
    handler = _UploadHandler(blobs, claim, limits)
    try:
        parser = MultipartParser(boundary.encode("latin-1"), handler.callbacks())  # type: ignore[arg-type]
        while not handler.ended and (chunk := stream.read(_CHUNK)):
            parser.write(chunk)
        parser.finalize()
        if not handler.ended:
            raise _bad_multipart("the multipart body ended before its closing boundary")
        if len(stream.read(_MAX_TRAILING_BYTES + 1)) > _MAX_TRAILING_BYTES:
            raise _bad_multipart("unexpected data after the multipart body's closing boundary")
        if handler.purpose is None:
            raise InvalidRequestError(
                "purpose is required", param="purpose", code="missing_purpose"
            )
        if handler.file is None:
            raise InvalidRequestError("file is required", param="file", code="missing_file")
        part = handler.file
        if part.checked and part.checker is not None:
            part.checker.finish()
        blob = part.writer.commit()
    except (MultipartParseError, ValueError) as exc:
        raise _bad_multipart(f"malformed multipart body: {str(exc)[:200]}") from None
    finally:
        handler.abort()
    if not part.checked:  # the purpose came after the file: check the stored bytes
        check_blob(blobs, blob, handler.purpose, limits)
    return ReceivedFile(purpose=handler.purpose, filename=part.filename, blob=blob)


def check_blob(blobs: BlobStore, blob: BlobInfo, purpose: Purpose, limits: FileLimits) -> None:
    """The JSONL check of ``purpose`` over a stored blob (nothing for ``user_data``)."""
    if purpose not in JSONL_PURPOSES:
        return
    checker = JsonlChecker(purpose, max_line_bytes=limits.max_line_bytes)
    with blobs.open(blob.digest) as f:
        while not checker.stopped and (chunk := f.read(_CHUNK)):
            checker.feed(chunk)
    checker.finish()
