"""The batch handler: run every line of a batch's input file through the gateway, keep each
answer as it comes, then write the output and error files.

Up to ``line_concurrency`` lines are in flight at once, so the engines batch them together
(and with interactive traffic, which goes first: generation lines ask for the ``batch``
priority). Each finished line is recorded at once (a group commit: the lines that finished
while the last write ran go in the next one), so a run resumed after a crash skips every
line already answered; only lines in flight at the crash run again, and each line is in
the output exactly once. A line the gateway refuses for overload (429, 503) is retried for
up to ``overload_seconds``; another server error or an unreachable gateway a few times.

When the batch's deadline passes (its completion window) before every line has run, the lines
in flight are aborted as for a cancel and the batch ends ``expired``: the lines answered are
in its output file, and every line not run is in its error file with the code
``batch_expired``, as OpenAI writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from operator import itemgetter
from typing import Any, BinaryIO, Final

import httpx

from lmaas.db import utc_now
from lmaas.jobs.batch_lines import (
    BadLine,
    BatchLine,
    answered_item,
    bad_item,
    check_line,
    failed_item,
    numbered_lines,
    parse_line,
    request_body,
)
from lmaas.jobs.context import JobContext, JobFailed, LeaseLost, Outcome
from lmaas.jobs.gateway import GatewayClient
from lmaas.jobs.leases import Item, JobLeases
from lmaas.jobs.store import JobInfo
from lmaas.store.files import FileStore, Viewer

log = logging.getLogger(__name__)

_READ_LINES: Final = 256
_FILE_CHUNK: Final = 1 << 20
_EVERYONE: Final = Viewer(None, admin=True)
_OVERLOADED: Final = frozenset({429, 503})
_SERVER_ERRORS: Final = frozenset({500, 502, 504})
_REPORT_EVERY_S: Final = 60.0
_WRITE_RETRY_S: Final = 1.0
EXPIRED_CODE: Final = "batch_expired"
EXPIRED_MESSAGE: Final = "This request could not be executed before the completion window expired."


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    overload_seconds: float = 600.0  # how long a line keeps retrying a 429 or 503
    tries: int = 4  # for another 5xx or an unreachable gateway
    backoff_max: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        wait = retry_after if retry_after is not None else 0.5 * 2 ** (attempt - 1)
        return min(wait, self.backoff_max)


class BatchHandler:
    kind = "batch"

    def __init__(
        self,
        gateway: GatewayClient,
        files: FileStore,
        *,
        line_concurrency: int = 16,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.gateway = gateway
        self.files = files
        self.line_concurrency = line_concurrency
        self.retry = retry or RetryPolicy()

    async def run(self, ctx: JobContext) -> Outcome:
        job = ctx.job
        total = job.progress.total
        resume = await ctx.call(ctx.leases.resume, job.id, ctx.runner, total)
        if resume is None:
            raise LeaseLost
        stopped = ctx.cancelled.is_set() or ctx.expired.is_set()
        if not stopped:
            before = len(resume.done_ids)
            earlier = f" ({before} were done by an earlier attempt)" if before else ""
            await ctx.event("info", f"running {total - before} of {total} lines{earlier}")
            sink = ItemSink(ctx, total, done=before, failed=resume.failed)
            stopped = await self._run_lines(ctx, sink, resume.done_ids)
        expired = stopped and ctx.expired.is_set() and not ctx.cancelled.is_set()
        if expired:
            await ctx.event("warning", "the completion window ended: lines not run are expired")
        return await self._finalize(ctx, expired=expired)

    # -- running the lines ----------------------------------------------------------------------

    async def _run_lines(self, ctx: JobContext, sink: ItemSink, done: frozenset[str]) -> bool:
        """Run the lines not ``done``; whether it stopped before running them all (a
        cancel, or the deadline)."""
        endpoint = str(ctx.job.input["endpoint"])
        handle = await ctx.call(self._open, ctx.job)
        slots = asyncio.Semaphore(self.line_concurrency)
        inflight: set[asyncio.Task[None]] = set()
        halt = asyncio.ensure_future(_first(ctx.cancelled, ctx.expired, sink.lost))
        halt.add_done_callback(lambda _: [task.cancel() for task in list(inflight)])
        writer = asyncio.create_task(sink.write_loop())
        try:
            async for line in _lines(handle):
                if line.key in done:
                    continue
                await _acquire_unless(slots, halt)
                if halt.done():
                    break
                task = asyncio.create_task(self._line(ctx, endpoint, line, sink))
                inflight.add(task)
                task.add_done_callback(_release(inflight, slots))
            await asyncio.gather(*inflight, return_exceptions=True)
            return halt.done()
        finally:
            halt.cancel()
            for task in list(inflight):
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
            handle.close()
            await sink.close(writer)

    def _open(self, job: JobInfo) -> BinaryIO:
        file_id = str(job.input["input_file_id"])
        try:
            return self.files.open(file_id, _EVERYONE)[1]
        except Exception as exc:
            log.exception("batch %s: cannot read its input file %s", job.id, file_id)
            raise JobFailed(
                f"the input file {file_id} cannot be read ({type(exc).__name__})",
                code="input_file_unreadable",
            ) from exc

    async def _line(
        self, ctx: JobContext, endpoint: str, line: BatchLine | BadLine, sink: ItemSink
    ) -> None:
        if isinstance(line, BadLine):
            sink.add(bad_item(line))
            return
        problem = check_line(line, endpoint)
        sink.add(bad_item(problem) if problem else await self._send(ctx, line))

    async def _send(self, ctx: JobContext, line: BatchLine) -> Item:
        job, body = ctx.job, request_body(line)
        overload_until = time.monotonic() + self.retry.overload_seconds
        for attempt in itertools.count(1):
            request_id = f"{job.id}-{line.number}" + (f".{attempt}" if attempt > 1 else "")
            try:
                reply = await self.gateway.post(
                    line.url, body, owner=job.owner_key_id, request_id=request_id
                )
            except httpx.TransportError as exc:
                if attempt >= self.retry.tries:
                    message = f"the gateway did not answer ({type(exc).__name__})"
                    return failed_item(line, "gateway_unreachable", message)
                await asyncio.sleep(self.retry.delay(attempt, None))
                continue
            overloaded = reply.status in _OVERLOADED and time.monotonic() < overload_until
            server_error = reply.status in _SERVER_ERRORS and attempt < self.retry.tries
            if not (overloaded or server_error):
                return answered_item(line, reply.status, reply.request_id, reply.body)
            await asyncio.sleep(self.retry.delay(attempt, reply.retry_after))
        raise AssertionError("unreachable")

    # -- the result -----------------------------------------------------------------------------

    async def _finalize(self, ctx: JobContext, *, expired: bool) -> Outcome:
        job, leases = ctx.job, ctx.leases
        if not await ctx.call(leases.begin_finalizing, job.id, ctx.runner):
            raise LeaseLost
        output_id, answered = await ctx.call(
            self._write_file, job, leases.outputs(job.id, ok=True), ok=True
        )
        errors: Iterable[str] = leases.outputs(job.id, ok=False)
        if expired:  # the lines not run go in line order among those that failed
            merged = heapq.merge(
                leases.numbered_outputs(job.id, ok=False),
                self._not_run(leases, job),
                key=itemgetter(0),
            )
            errors = (output for _, output in merged)
        error_id, error_lines = await ctx.call(self._write_file, job, errors, ok=False)
        prompt, completion = await ctx.call(leases.usage, job.id)
        result = {
            "output_file_id": output_id,
            "error_file_id": error_id,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
        }
        failed = "failed or not run" if expired else "failed"
        message = f"{answered} lines answered, {error_lines} {failed}"
        return ctx.ended(ok_message=message, expired=expired, result=result, drop_items=True)

    def _not_run(self, leases: JobLeases, job: JobInfo) -> Iterator[tuple[int, str]]:
        """The number and ``batch_expired`` error line of each line of the input not run."""
        done = leases.done_keys(job.id)
        with self._open(job) as handle:
            for number, raw in numbered_lines(handle):
                line = parse_line(number, raw)
                if line.key not in done:
                    yield number, failed_item(line, EXPIRED_CODE, EXPIRED_MESSAGE).output

    def _write_file(
        self, job: JobInfo, outputs: Iterable[str], *, ok: bool
    ) -> tuple[str | None, int]:
        """The output (``ok``) or error file of ``outputs`` (one line each), and its line
        count; no file when there is no line."""
        lines = _Counted(iter(outputs))
        first = next(lines, None)
        if first is None:
            return None, 0
        name = f"{job.id}_{'output' if ok else 'error'}.jsonl"
        stored = self.files.add(
            _chunks(itertools.chain([first], lines)),
            purpose="batch_output",
            filename=name,
            owner_key_id=job.owner_key_id,
        )
        return stored.id, lines.count


class _Counted(Iterator[str]):
    def __init__(self, items: Iterator[str]) -> None:
        self._items = items
        self.count = 0

    def __next__(self) -> str:
        item = next(self._items)
        self.count += 1
        return item


def _chunks(lines: Iterator[str]) -> Iterator[bytes]:
    buffer: list[bytes] = []
    size = 0
    for line in lines:
        data = line.encode() + b"\n"
        buffer.append(data)
        size += len(data)
        if size >= _FILE_CHUNK:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


async def _lines(handle: BinaryIO) -> AsyncIterator[BatchLine | BadLine]:
    """The file's lines, read and parsed on a thread a few hundred at a time."""
    numbered = numbered_lines(handle)

    def some() -> list[BatchLine | BadLine]:
        return [parse_line(n, raw) for n, raw in itertools.islice(numbered, _READ_LINES)]

    while batch := await asyncio.to_thread(some):
        for line in batch:
            yield line


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
                log.exception("batch %s: recording finished lines failed", self.ctx.job.id)
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
