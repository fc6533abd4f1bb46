"""The runner's loop: claim jobs up to ``max_concurrent``, run each with its kind's handler
while a heartbeat keeps its lease, and write how it ended.

A job's heartbeat renews its lease every ``heartbeat_interval`` seconds and brings back
whether a cancel was asked (``ctx.cancelled``). When a heartbeat finds the lease gone (the
runner stalled past its lease and another runner took the job), the handler is cancelled and
nothing more is written for it. When the loop is stopped, each running job's handler is
cancelled and its lease given back, so another runner resumes it at once.

A job whose deadline has passed (``ctx.expired``: seen when it is claimed, or by a heartbeat)
is stopped by its handler as for a cancel, and ends ``expired``. Jobs past their deadline that
no runner holds are claimed besides the ``max_concurrent`` others (up to as many again): their
handlers only write what was done, so an expired job is not left waiting behind long ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from lmaas.jobs.context import JobContext, JobFailed, JobHandler, LeaseLost, Outcome
from lmaas.jobs.leases import JobLeases
from lmaas.jobs.store import JobInfo

log = logging.getLogger(__name__)


def heartbeat_interval(lease_seconds: float) -> float:
    """A tenth of the lease, between 0.2 and 3 s: a lease survives several lost beats, and
    a cancel reaches a running job within seconds."""
    return min(max(lease_seconds / 10, 0.2), 3.0)


class JobLoop:
    def __init__(
        self,
        leases: JobLeases,
        handlers: Mapping[str, JobHandler],
        *,
        runner: str,
        max_concurrent: int,
        heartbeat_interval: float,
        poll_interval: float = 2.0,
    ) -> None:
        self.leases = leases
        self.handlers = dict(handlers)
        self.runner = runner
        self.max_concurrent = max_concurrent
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.running: dict[str, asyncio.Task[None]] = {}
        self.expiring: set[str] = set()  # claimed past their deadline: not counted above

    async def run(self, stop: asyncio.Event, wake: asyncio.Event | None = None) -> None:
        """Work until ``stop`` is set; ``wake`` says a job may have been queued."""
        wake = wake or asyncio.Event()
        try:
            while not stop.is_set():
                await self._claim_what_fits()
                await self._wait(stop, wake)
        finally:
            tasks = list(self.running.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _claim_what_fits(self) -> None:
        try:
            for job_id in await asyncio.to_thread(self.leases.fail_exhausted):
                log.error("job %s failed: its runners kept stopping", job_id)
            while len(self.expiring) < self.max_concurrent:
                job = await asyncio.to_thread(
                    self.leases.claim, self.runner, self.handlers, due_only=True
                )
                if job is None:
                    break
                self.expiring.add(job.id)
                self._start(job)
            while len(self.running) - len(self.expiring) < self.max_concurrent:
                job = await asyncio.to_thread(self.leases.claim, self.runner, self.handlers)
                if job is None:
                    return
                self._start(job)
        except Exception:  # the database is away for a moment: try again next round
            log.exception("claiming jobs failed")

    def _start(self, job: JobInfo) -> None:
        log.info("job %s (%s): attempt %d", job.id, job.kind, job.attempts)
        task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self.running[job.id] = task
        task.add_done_callback(self._forget(job.id))

    def _forget(self, job_id: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self.running.pop(job_id, None)
            self.expiring.discard(job_id)

        return forget

    async def _wait(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
        try:
            await asyncio.wait(
                waiters | set(self.running.values()),
                timeout=self.poll_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        wake.clear()

    async def _run(self, job: JobInfo) -> None:
        ctx = JobContext(job, self.runner, self.leases)
        if job.cancel_requested_at is not None:
            ctx.cancelled.set()
        if job.expires_at is not None and job.expires_at <= self.leases.now():
            ctx.expired.set()
        work = asyncio.create_task(self.handlers[job.kind].run(ctx), name=f"handler-{job.id}")
        beat = asyncio.create_task(self._heartbeat(ctx, work), name=f"heartbeat-{job.id}")
        try:
            outcome = await self._outcome(ctx, work)
        except asyncio.CancelledError:
            if not ctx.lost:  # the loop is stopping: the job goes back to be resumed
                await _shielded(self.leases.release, job.id, self.runner, "the runner stopped")
            raise
        finally:
            beat.cancel()
        if outcome is None:
            return
        finished = await asyncio.to_thread(
            self.leases.finish,
            job.id,
            self.runner,
            outcome.status,
            message=outcome.message,
            result=outcome.result,
            error=outcome.error,
            drop_items=outcome.drop_items,
        )
        log.info("job %s: %s%s", job.id, outcome.status, "" if finished else " (lease lost)")

    async def _outcome(self, ctx: JobContext, work: asyncio.Task[Outcome]) -> Outcome | None:
        """The handler's outcome; ``None`` when the lease was lost (nothing to write)."""
        try:
            return await work
        except LeaseLost:
            ctx.lost = True
        except asyncio.CancelledError:
            if not ctx.lost:
                raise
        except JobFailed as exc:
            return Outcome("failed", exc.message, error=exc.to_error())
        except Exception as exc:
            log.exception("job %s: its handler failed", ctx.job.id)
            return Outcome.failed(
                "internal_error", f"the job's runner failed ({type(exc).__name__}); see its log"
            )
        log.warning("job %s: lost its lease to another runner; stopped", ctx.job.id)
        return None

    async def _heartbeat(self, ctx: JobContext, work: asyncio.Task[Outcome]) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                beat = await asyncio.to_thread(self.leases.heartbeat, ctx.job.id, self.runner)
            except Exception:  # the lease may still be renewed in time by the next beat
                log.exception("job %s: heartbeat failed", ctx.job.id)
                continue
            if not beat.held:
                ctx.lost = True
                work.cancel()
                return
            if beat.cancel_requested:
                ctx.cancelled.set()
            if beat.expired:
                ctx.expired.set()


async def _shielded(fn: object, *args: object) -> None:
    """Run a blocking call to its end even though the caller is being cancelled."""
    assert callable(fn)
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    with contextlib.suppress(Exception):
        await asyncio.shield(task)
