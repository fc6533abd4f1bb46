"""Running a job's items a few at a time: the loop batches and eval runs share.

Items come from an async iterator; the ones an earlier attempt finished (``skip``) are passed
over; up to ``concurrency`` run at once; each result goes to the job's :class:`ItemSink`,
which records it. A cancel or a lost lease stops the loop: items in flight are cancelled
(closing their connections to the gateway) and what finished is written before returning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, Final, TypeVar

from lmaas.db import utc_now
from lmaas.jobs.context import JobContext, LeaseLost
from lmaas.jobs.leases import Item

E = TypeVar("E")
log = logging.getLogger(__name__)
_REPORT_EVERY_S: Final = 60.0
_WRITE_RETRY_S: Final = 1.0


async def run_items(
    ctx: JobContext,
    sink: ItemSink,
    entries: AsyncIterator[E],
    work: Callable[[E], Awaitable[Item]],
    *,
    key: Callable[[E], str],
    skip: frozenset[str],
    concurrency: int,
) -> bool:
    """Run ``work`` on every entry not in ``skip``; whether it stopped before the end (a
    cancel, the deadline, or the lease lost)."""
    slots = asyncio.Semaphore(concurrency)
    inflight: set[asyncio.Task[None]] = set()
    halt = asyncio.ensure_future(_first(ctx.cancelled, ctx.expired, sink.lost))
    halt.add_done_callback(lambda _: [task.cancel() for task in list(inflight)])
    writer = asyncio.create_task(sink.write_loop())

    async def one(entry: E) -> None:
        sink.add(await work(entry))

    try:
        async for entry in entries:
            if key(entry) in skip:
                continue
            await _acquire_unless(slots, halt)
            if halt.done():
                break
            task = asyncio.create_task(one(entry))
            inflight.add(task)
            task.add_done_callback(_release(inflight, slots))
        await asyncio.gather(*inflight, return_exceptions=True)
        return halt.done()
    finally:
        halt.cancel()
        for task in list(inflight):
            task.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
        await sink.close(writer)


def _release(
    inflight: set[asyncio.Task[None]], slots: asyncio.Semaphore
) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        inflight.discard(task)
        slots.release()

    return done


async def _first(*events: asyncio.Event) -> None:
    """Return once any of ``events`` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _acquire_unless(slots: asyncio.Semaphore, halt: asyncio.Future[Any]) -> None:
    """Take a slot, unless ``halt`` completes first (then no slot is held)."""
    if halt.done():
        return
    acquire: asyncio.Future[Any] = asyncio.ensure_future(slots.acquire())
    await asyncio.wait({acquire, halt}, return_when=asyncio.FIRST_COMPLETED)
    if not acquire.done():
        acquire.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquire
    elif halt.done():
        slots.release()


class ItemSink:
    """Records finished lines as they come (group commits) and reports progress."""

    def __init__(self, ctx: JobContext, total: int, *, done: int, failed: int) -> None:
        self.ctx = ctx
        self.total = total
        self.done = done
        self.failed = failed
        self.lost = asyncio.Event()
        self._pending: list[Item] = []
        self._more = asyncio.Event()
        self._closing = False
        self._started = time.monotonic()
        self._ran = 0  # lines finished by this attempt
        self._reported_at = self._started
        self._reported_tenth = done * 10 // max(total, 1)

    def add(self, item: Item) -> None:
        if not self.lost.is_set():
            self._pending.append(item)
            self._more.set()

    async def write_loop(self) -> None:
        while not (self._closing and not self._pending):
            await self._more.wait()
            self._more.clear()
            if not self._pending:
                continue
            try:
                await self._flush()
            except LeaseLost:
                raise
            except Exception:  # the database was away: the items wait for the next try
                log.exception("job %s: recording finished items failed", self.ctx.job.id)
                await asyncio.sleep(_WRITE_RETRY_S)
                self._more.set()

    async def close(self, writer: asyncio.Task[None]) -> None:
        """Write what is pending and end ``writer``; LeaseLost if a write was refused."""
        self._closing = True
        self._more.set()
        with contextlib.suppress(LeaseLost):
            await writer
        if self.lost.is_set():
            raise LeaseLost

    async def _flush(self) -> None:
        items, self._pending = self._pending, []
        ran = self._ran + len(items)
        remaining = self.total - self.done - len(items)
        elapsed = time.monotonic() - self._started
        eta = None
        if remaining > 0 and elapsed > 0:
            eta = utc_now() + timedelta(seconds=remaining * elapsed / ran)
        ctx = self.ctx
        try:
            held = await ctx.call(ctx.leases.record, ctx.job.id, ctx.runner, items, eta_at=eta)
        except Exception:
            self._pending[:0] = items
            raise
        if not held:
            self.lost.set()
            raise LeaseLost
        self._ran = ran
        self.done += len(items)
        self.failed += sum(1 for item in items if not item.ok)
        await self._report(eta)

    async def _report(self, eta: object) -> None:
        now = time.monotonic()
        tenth = self.done * 10 // max(self.total, 1)
        if tenth == self._reported_tenth and now - self._reported_at < _REPORT_EVERY_S:
            return
        self._reported_tenth, self._reported_at = tenth, now
        rate = self._ran / max(now - self._started, 1e-9)
        eta_s = (self.total - self.done) / rate if rate > 0 else None
        await self.ctx.event(
            "info",
            f"{self.done} of {self.total} lines done ({self.failed} failed)",
            {
                "done": self.done,
                "failed": self.failed,
                "total": self.total,
                "lines_per_second": round(rate, 3),
                "eta_seconds": None if eta_s is None else round(eta_s, 1),
            },
        )
