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
import heapq
import itertools
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from operator import itemgetter
from typing import BinaryIO, Final

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
from lmaas.jobs.gateway import GatewayClient, GatewayUnreachable, RetryPolicy, post_retrying
from lmaas.jobs.item_runs import ItemSink, run_items
from lmaas.jobs.leases import Item, JobLeases
from lmaas.jobs.storage import JobFiles
from lmaas.jobs.store import JobInfo

log = logging.getLogger(__name__)

_READ_LINES: Final = 256
_FILE_CHUNK: Final = 1 << 20
EXPIRED_CODE: Final = "batch_expired"
EXPIRED_MESSAGE: Final = "This request could not be executed before the completion window expired."


class BatchHandler:
    kind = "batch"

    def __init__(
        self,
        gateway: GatewayClient,
        files: JobFiles,
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
        try:
            return await run_items(
                ctx,
                sink,
                _lines(handle),
                lambda line: self._line(ctx, endpoint, line),
                key=lambda line: line.key,
                skip=done,
                concurrency=self.line_concurrency,
            )
        finally:
            handle.close()

    def _open(self, job: JobInfo) -> BinaryIO:
        file_id = str(job.input["input_file_id"])
        try:
            return self.files.open_input(file_id)
        except Exception as exc:
            log.exception("batch %s: cannot read its input file %s", job.id, file_id)
            raise JobFailed(
                f"the input file {file_id} cannot be read ({type(exc).__name__})",
                code="input_file_unreadable",
            ) from exc

    async def _line(self, ctx: JobContext, endpoint: str, line: BatchLine | BadLine) -> Item:
        if isinstance(line, BadLine):
            return bad_item(line)
        problem = check_line(line, endpoint)
        return bad_item(problem) if problem else await self._send(ctx, line)

    async def _send(self, ctx: JobContext, line: BatchLine) -> Item:
        job = ctx.job
        try:
            reply = await post_retrying(
                self.gateway,
                line.url,
                request_body(line),
                owner=job.owner_key_id,
                request_id=f"{job.id}-{line.number}",
                retry=self.retry,
            )
        except GatewayUnreachable as exc:
            return failed_item(line, "gateway_unreachable", str(exc))
        return answered_item(line, reply.status, reply.request_id, reply.body)

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
        file_id = self.files.add_output(
            _chunks(itertools.chain([first], lines)),
            job_id=job.id,
            purpose="batch_output",
            filename=name,
            owner_key_id=job.owner_key_id,
        )
        return file_id, lines.count


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
