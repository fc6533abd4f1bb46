"""Running a job's items a few at a time: the loop batches and eval runs share.

Items come from an async iterator; the ones an earlier attempt finished (``skip``) are passed
over; up to ``concurrency`` run at once; each result goes to the job's :class:`ItemSink`,
which records it. A cancel or a lost lease stops the loop: items in flight are cancelled
(closing their connections to the gateway) and what finished is written before returning.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from lmaas.jobs.batch import ItemSink, _acquire_unless, _first, _release
from lmaas.jobs.context import JobContext
from lmaas.jobs.leases import Item

E = TypeVar("E")


async def run_items(
    ctx: JobContext,
    sink: ItemSink,
    entries: AsyncIterator[E],
    work: Callable[[E], Awaitable[Item]],
    *,
    key: Callable[[E], str],
    skip: frozenset[str],
    concurrency: int,
) -> None:
    slots = asyncio.Semaphore(concurrency)
    inflight: set[asyncio.Task[None]] = set()
    halt = asyncio.ensure_future(_first(ctx.cancelled, sink.lost))
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
    finally:
        halt.cancel()
        for task in list(inflight):
            task.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
        await sink.close(writer)
