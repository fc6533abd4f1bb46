"""Job deadlines on a clock moved by hand: a job past its deadline is claimed once more to be
ended ``expired`` (queued and never started, or left by a dead runner), even when the runner
is busy with other jobs; a runner holding a job learns of the deadline from its heartbeat and
its handler stops as for a cancel; an accepted cancel still wins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from lmaas.jobs.context import JobContext, Outcome
from lmaas.jobs.loop import JobLoop
from tests.unit.jobs.conftest import LEASE_S, OWNER, Jobs
from tests.unit.jobs.test_job_loop import until

WINDOW_S = 10.0  # shorter than a lease, so moving past it leaves a held lease held


def new_job(jobs: Jobs, window_s: float | None = WINDOW_S) -> str:
    jobs.clock.advance(1)
    expires_in = None if window_s is None else timedelta(seconds=window_s)
    job = jobs.store.create(
        "fake", id_prefix="fake", owner_key_id=OWNER.key_id, input={}, expires_in=expires_in
    )
    return job.id


def test_a_job_past_its_deadline_is_claimed_to_be_ended_not_started(jobs: Jobs) -> None:
    due = new_job(jobs)
    assert jobs.store.get(due, OWNER).expires_at == jobs.clock.now + timedelta(seconds=WINDOW_S)
    later, never = new_job(jobs, 3600), new_job(jobs, None)
    assert jobs.leases.claim("r1", due_only=True) is None
    jobs.clock.advance(WINDOW_S)
    job = jobs.leases.claim("r1", due_only=True)
    assert job is not None and job.id == due
    assert (job.status, job.started_at, job.lease_owner) == ("finalizing", None, "r1")
    assert job.finalizing_at == jobs.clock.now
    assert jobs.leases.claim("r1", due_only=True) is None  # neither `later` nor `never`
    messages = [e.message for e in jobs.store.events(due, OWNER).events]
    assert (
        messages[-1].startswith("its deadline (")
        and "runner r1 writes what was done" in (messages[-1])
    )
    assert {jobs.status(later), jobs.status(never)} == {"queued"}


def test_a_heartbeat_tells_the_runner_the_deadline_passed(jobs: Jobs) -> None:
    job_id = new_job(jobs)
    assert jobs.leases.claim("r1") is not None
    beat = jobs.leases.heartbeat(job_id, "r1")
    assert (beat.held, beat.expired) == (True, False)
    jobs.clock.advance(WINDOW_S)
    beat = jobs.leases.heartbeat(job_id, "r1")
    assert (beat.held, beat.expired, beat.cancel_requested) == (True, True, False)
    assert jobs.leases.claim("r2", due_only=True) is None  # r1 still holds it
    assert jobs.leases.finish(job_id, "r1", "expired", message="expired; 0 lines")
    job = jobs.store.get(job_id, OWNER)
    assert (job.status, job.finished, job.finished_at) == ("expired", True, jobs.clock.now)


def test_a_job_whose_runner_died_past_its_deadline_is_claimed_to_be_ended(jobs: Jobs) -> None:
    job_id = new_job(jobs)
    assert jobs.leases.claim("dead") is not None
    jobs.clock.advance(LEASE_S + 1)
    job = jobs.leases.claim("r2", due_only=True)
    assert job is not None and job.id == job_id
    assert (job.status, job.attempts, job.started_at is not None) == ("finalizing", 2, True)


def test_a_cancel_accepted_before_the_end_wins_over_expiry(jobs: Jobs) -> None:
    job_id = new_job(jobs)
    assert jobs.leases.claim("r1") is not None
    assert jobs.store.cancel(job_id, OWNER).status == "cancelling"
    jobs.clock.advance(WINDOW_S)
    assert jobs.leases.finish(job_id, "r1", "expired", message="expired; 1 line")
    assert jobs.status(job_id) == "cancelled"
    last = jobs.store.events(job_id, OWNER).events[-1].message
    assert last == "cancelled (its deadline passed): expired; 1 line"


class WaitingHandler:
    """Runs until a cancel or the deadline stops it, or the test ends it (``release``)."""

    kind = "fake"

    def __init__(self) -> None:
        self.started: list[tuple[str, bool]] = []  # (job id, expired when it started)
        self.release = asyncio.Event()

    async def run(self, ctx: JobContext) -> Outcome:
        self.started.append((ctx.job.id, ctx.expired.is_set()))
        waiters = [asyncio.ensure_future(e.wait()) for e in (ctx.expired, self.release)]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        return ctx.ended(ok_message="stopped", expired=ctx.expired.is_set())


@asynccontextmanager
async def loop_of(jobs: Jobs, handler: WaitingHandler) -> AsyncIterator[None]:
    loop = JobLoop(
        jobs.leases,
        {"fake": handler},
        runner="r1",
        max_concurrent=1,
        heartbeat_interval=0.02,
        poll_interval=0.05,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        yield
    finally:
        handler.release.set()
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_running_job_stops_at_its_deadline_and_ends_expired(jobs: Jobs) -> None:
    handler = WaitingHandler()
    job_id = new_job(jobs)
    async with loop_of(jobs, handler):
        await until(lambda: handler.started == [(job_id, False)])
        jobs.clock.advance(WINDOW_S)
        await until(lambda: jobs.status(job_id) == "expired")
    assert jobs.store.events(job_id, OWNER).events[-1].message == "expired; stopped"


async def test_a_queued_job_past_its_deadline_is_ended_while_the_runner_is_busy(
    jobs: Jobs,
) -> None:
    handler = WaitingHandler()
    busy = new_job(jobs, None)
    async with loop_of(jobs, handler):
        await until(lambda: handler.started == [(busy, False)])
        waiting = new_job(jobs)  # max_concurrent is 1: it stays queued behind `busy`
        assert jobs.status(waiting) == "queued"
        jobs.clock.advance(WINDOW_S)
        await until(lambda: jobs.status(waiting) == "expired")
        assert handler.started == [(busy, False), (waiting, True)]
        assert jobs.status(busy) == "in_progress"
    assert jobs.store.get(waiting, OWNER).started_at is None
