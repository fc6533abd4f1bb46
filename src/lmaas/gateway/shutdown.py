"""Graceful shutdown: refuse new requests, let running ones finish, cut what overruns.

`lmaas serve` calls :meth:`Drain.begin` when uvicorn starts shutting down (SIGTERM or
SIGINT); the request middleware refuses requests from then on (503, ``Retry-After``) and
registers the running ones, which :meth:`Drain.begin` cancels once ``seconds`` have passed.
The middleware turns such a cancellation into a clean ending (a 503 body, or an SSE error
event and ``[DONE]`` for a stream already under way), so no client sees a 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from lmaas.errors import ServiceUnavailableError


class Drain:
    """The shutdown state of one app (kept on ``app.state.drain``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False
        self.cutting = False
        self._running: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._on_begin: list[Callable[[], None]] = []

    def on_begin(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the drain begins (the job runner stops then)."""
        self._on_begin.append(callback)

    def begin(self) -> None:
        """Refuse new requests from now on; cut the running ones after ``seconds``.
        Called on the event loop; a second call changes nothing."""
        if self.draining:
            return
        self.draining = True
        self._timer = asyncio.get_running_loop().call_later(self.seconds, self.cut)
        for callback in self._on_begin:
            callback()

    def cut(self) -> None:
        """Cancel every request still running (the middleware ends each one cleanly)."""
        self.cutting = True
        for task in list(self._running):
            task.cancel("the server is shutting down")

    def track(self, task: asyncio.Task[object]) -> None:
        self._running.add(task)

    def untrack(self, task: asyncio.Task[object]) -> None:
        self._running.discard(task)

    @property
    def running(self) -> int:
        return len(self._running)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def refusal() -> ServiceUnavailableError:
    """What a request gets when the server is shutting down."""
    return ServiceUnavailableError(
        "the server is shutting down; retry against another instance", retry_after=5
    )
