"""The runner's loop with a scripted handler: jobs run to their end, never more than
``max_concurrent`` at once; a cancel reaches a running handler through its heartbeat; a
stopping runner lets its jobs go; a runner that lost its lease stops without writing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from lmaas.jobs.context import JobContext, JobFailed, Outcome
from lmaas.jobs.loop import JobLoop, heartbeat_interval
from tests.unit.jobs.conftest import LEASE_S, OWNER, Jobs


class ScriptedHandler:
    """Runs each job until the test releases it (``finish``), or fails it on request."""

    kind = "fake"

    def __init__(self) -> None:
        self.started: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self.cancelled_seen: list[str] = []
        self.interrupted: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.raise_: dict[str, Exception] = {}

    def gate(self, job_id: str) -> asyncio.Event:
        return self.release.setdefault(job_id, asyncio.Event())

    async def run(self, ctx: JobContext) -> Outcome:
        job_id = ctx.job.id
        self.started.append(job_id)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            gate = asyncio.ensure_future(self.gate(job_id).wait())
            cancel = asyncio.ensure_future(ctx.cancelled.wait())
            await asyncio.wait({gate, cancel}, return_when=asyncio.FIRST_COMPLETED)
            gate.cancel()
            cancel.cancel()
        except asyncio.CancelledError:
            self.interrupted.append(job_id)
            raise
        finally:
            self.running -= 1
        if job_id in self.raise_:
            raise self.raise_[job_id]
        if ctx.cancelled.is_set():
            self.cancelled_seen.append(job_id)
        return ctx.ended(ok_message="done", result={"n": ctx.job.input["n"]})


async def until(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until ``check()`` is true (the loop works on threads and timers)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running_loop(
    jobs: Jobs, handler: ScriptedHandler, *, runner: str = "r1", max_concurrent: int = 1
) -> AsyncIterator[tuple[JobLoop, asyncio.Event]]:
    loop = JobLoop(
        jobs.leases,
        {"fake": handler},
        runner=runner,
        max_concurrent=max_concurrent,
        heartbeat_interval=0.02,
        poll_interval=0.05,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        yield loop, stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_heartbeats_come_several_times_per_lease() -> None:
    assert heartbeat_interval(30) == 3.0
    assert heartbeat_interval(5) == 0.5
    assert heartbeat_interval(2) == 0.2


async def test_jobs_run_to_their_end_at_most_max_concurrent_at_once(jobs: Jobs) -> None:
    handler = ScriptedHandler()
    ids = [jobs.new(total=i) for i in range(3)]
    async with running_loop(jobs, handler, max_concurrent=2):
        await until(lambda: len(handler.started) == 2)
        assert handler.started == ids[:2]  # oldest first
        handler.gate(ids[0]).set()
        await until(lambda: len(handler.started) == 3)
        handler.gate(ids[1]).set()
        handler.gate(ids[2]).set()
        await until(lambda: all(jobs.status(i) == "completed" for i in ids))
    assert handler.most_at_once == 2
    job = jobs.store.get(ids[2], OWNER)
    assert job.result == {"n": 2} and job.lease_expires_at is None
    messages = [e.message for e in jobs.store.events(ids[2], OWNER).events]
    assert messages[1].startswith("started by runner r1") and messages[-1] == "completed; done"


async def test_a_cancel_reaches_the_running_handler_through_its_heartbeat(jobs: Jobs) -> None:
    handler = ScriptedHandler()
    job_id = jobs.new()
    async with running_loop(jobs, handler):
        await until(lambda: handler.started == [job_id])
        assert jobs.store.cancel(job_id, OWNER).status == "cancelling"
        await until(lambda: jobs.status(job_id) == "cancelled")
    assert handler.cancelled_seen == [job_id]


async def test_a_stopping_runner_lets_its_job_go_for_the_next_one(jobs: Jobs) -> None:
    handler = ScriptedHandler()
    job_id = jobs.new()
    async with running_loop(jobs, handler):
        await until(lambda: handler.started == [job_id])
    assert handler.interrupted == [job_id]
    job = jobs.store.get(job_id, OWNER)
    assert (job.status, job.attempts, job.lease_owner) == ("in_progress", 0, None)
    resumed = jobs.leases.claim("r2")  # at once, on the same clock
    assert resumed is not None and resumed.id == job_id and resumed.attempts == 1


async def test_a_runner_that_lost_its_lease_stops_without_writing(jobs: Jobs) -> None:
    handler = ScriptedHandler()
    job_id = jobs.new()
    async with running_loop(jobs, handler):
        await until(lambda: handler.started == [job_id])
        jobs.clock.advance(LEASE_S + 1)  # as if r1 had stalled past its lease
        taken = jobs.leases.claim("r2")
        assert taken is not None and taken.id == job_id
        await until(lambda: handler.interrupted == [job_id])
    job = jobs.store.get(job_id, OWNER)
    assert (job.status, job.lease_owner, job.attempts) == ("in_progress", "r2", 2)
    assert jobs.leases.finish(job_id, "r2", "completed", message="r2 finished it")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (JobFailed("the input is gone", code="input_file_unreadable"), "input_file_unreadable"),
        (RuntimeError("boom"), "internal_error"),
    ],
)
async def test_a_handler_that_raises_fails_its_job(jobs: Jobs, error: Exception, code: str) -> None:
    handler = ScriptedHandler()
    job_id = jobs.new()
    handler.raise_[job_id] = error
    handler.gate(job_id).set()
    async with running_loop(jobs, handler):
        await until(lambda: jobs.status(job_id) == "failed")
    job = jobs.store.get(job_id, OWNER)
    assert job.error is not None and job.error["code"] == code
    assert "boom" not in job.error["message"]  # an unexpected error is told by its type only


async def test_the_loop_fails_jobs_whose_runners_kept_dying(jobs: Jobs) -> None:
    handler = ScriptedHandler()
    job_id = jobs.new()
    for runner in ("a", "b", "c"):
        assert jobs.leases.claim(runner) is not None
        jobs.clock.advance(LEASE_S + 1)
    async with running_loop(jobs, handler):
        await until(lambda: jobs.status(job_id) == "failed")
    assert handler.started == []
