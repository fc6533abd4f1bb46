"""A blocking file over an async byte stream, so a parser can run in a worker thread while the
event loop keeps receiving the request body."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from lmaas.errors import InvalidRequestError, RequestTooLargeError


class AsyncStreamReader(io.RawIOBase):
    """Read ``stream`` (iterated on ``loop``) from another thread.

    More than ``max_bytes`` in total raises ``RequestTooLargeError``; a stream that yields
    nothing for ``timeout`` seconds raises ``InvalidRequestError``. Never call :meth:`read`
    from the loop's own thread: it would wait for itself.
    """

    def __init__(
        self,
        stream: AsyncIterable[bytes],
        loop: asyncio.AbstractEventLoop,
        max_bytes: int,
        *,
        timeout: float = 600.0,
    ) -> None:
        super().__init__()
        self._iterator: AsyncIterator[bytes] = aiter(stream)
        self._loop = loop
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._pending = memoryview(b"")
        self._received = 0
        self._eof = False

    @property
    def received(self) -> int:
        return self._received

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            if self._eof:
                return 0
            chunk = self._next_chunk()
            if chunk is None:
                self._eof = True
                return 0
            self._received += len(chunk)
            if self._received > self._max_bytes:
                raise RequestTooLargeError(
                    f"upload exceeds the limit of {self._max_bytes} bytes "
                    "(limits.max_upload_bytes)",
                    code="blob_too_large",
                )
            self._pending = memoryview(chunk)
        target = memoryview(buffer).cast("B")
        n = min(len(target), len(self._pending))
        target[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _next_chunk(self) -> bytes | None:
        future = asyncio.run_coroutine_threadsafe(self._anext(), self._loop)
        try:
            return future.result(self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise InvalidRequestError(
                f"the upload sent nothing for {self._timeout:.0f} seconds",
                code="upload_stalled",
            ) from None

    async def _anext(self) -> bytes | None:
        try:
            return await anext(self._iterator)
        except StopAsyncIteration:
            return None
