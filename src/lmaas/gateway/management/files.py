"""The Files API (``/v1/files``) over the file store: each method is one route's work.

Every call names the caller's key (``None`` on an open server): a key sees and deletes only
the files it uploaded, an admin key every file (:class:`lmaas.store.files.Viewer`). Store
work runs off the event loop; an upload streams from the request body into the blob store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO, Final

from lmaas.errors import InvalidRequestError, UnsupportedMediaTypeError
from lmaas.keys import KeyInfo
from lmaas.protocol.files import FileDeleted, FileList, FileObject
from lmaas.store.file_upload import MULTIPART_OVERHEAD, too_large
from lmaas.store.files import FileStore, Order, StoredFile, Viewer

_READ_CHUNK: Final = 1 << 20


def viewer_of(key: KeyInfo | None) -> Viewer:
    if key is None:
        return Viewer(None)
    return Viewer(key.id, admin=key.is_admin)


def file_object(file: StoredFile) -> FileObject:
    return FileObject(
        id=file.id,
        bytes=file.bytes,
        created_at=int(file.created_at.timestamp()),
        filename=file.filename,
        purpose=file.purpose,
        status=file.status,
    )


def multipart_boundary(content_type: str) -> str:
    """The boundary of a ``multipart/form-data`` Content-Type (415 for another type)."""
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            "upload a file as multipart/form-data with the fields `file` and `purpose`",
            param="Content-Type",
        )
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
            if 1 <= len(boundary) <= 70:
                return boundary
    raise InvalidRequestError("multipart/form-data needs a boundary", param="Content-Type")


@dataclass
class FileContent:
    """A file's bytes as a download sends them (the handle is closed once they are read)."""

    file: StoredFile
    handle: BinaryIO

    def chunks(self) -> Iterator[bytes]:
        with self.handle:
            while chunk := self.handle.read(_READ_CHUNK):
                yield chunk


class FileManagement:
    """The ``/v1/files`` operations over one :class:`FileStore`; kept on ``app.state``."""

    def __init__(self, files: FileStore) -> None:
        self._files = files

    async def upload(
        self,
        key: KeyInfo | None,
        content_type: str,
        content_length: str | None,
        body: AsyncIterable[bytes],
    ) -> FileObject:
        boundary = multipart_boundary(content_type)
        limits = self._files.limits
        # Refused before reading: a body this long cannot hold an acceptable file.
        too_long = limits.max_bytes + MULTIPART_OVERHEAD
        if content_length and content_length.isdigit() and int(content_length) > too_long:
            raise too_large(limits)
        stored = await self._files.upload(body, boundary, viewer_of(key))
        return file_object(stored)

    async def list(
        self,
        key: KeyInfo | None,
        *,
        after: str | None,
        limit: int,
        order: Order,
        purpose: str | None,
    ) -> FileList:
        list_files = partial(
            self._files.list, viewer_of(key), after=after, limit=limit, order=order, purpose=purpose
        )
        page = await asyncio.to_thread(list_files)
        data = [file_object(f) for f in page.files]
        return FileList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=page.has_more,
        )

    async def retrieve(self, key: KeyInfo | None, file_id: str) -> FileObject:
        return file_object(await asyncio.to_thread(self._files.get, file_id, viewer_of(key)))

    async def content(self, key: KeyInfo | None, file_id: str) -> FileContent:
        file, handle = await asyncio.to_thread(self._files.open, file_id, viewer_of(key))
        return FileContent(file, handle)

    async def delete(self, key: KeyInfo | None, file_id: str) -> FileDeleted:
        file = await asyncio.to_thread(self._files.delete, file_id, viewer_of(key))
        return FileDeleted(id=file.id)
