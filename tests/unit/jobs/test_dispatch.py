"""The dispatcher's order and leases, on a clock moved by hand: the most urgent job first,
a lease that heartbeats keep alive, and a job that outlives its runner claimed again."""

from __future__ import annotations

from tests.unit.jobs.conftest import LEASE_S, OWNER, Jobs


def claimed(jobs: Jobs, runner: str = "r1", kinds: list[str] | None = None) -> str | None:
    job = jobs.leases.claim(runner, kinds)
    return None if job is None else job.id


def test_claims_go_by_priority_then_age(jobs: Jobs) -> None:
    old_low, high, new_low = jobs.new(), jobs.new(priority=5), jobs.new()
    urgent = jobs.new(priority=9)
    assert [claimed(jobs) for _ in range(5)] == [urgent, high, old_low, new_low, None]


def test_a_claim_takes_only_the_kinds_its_runner_knows(jobs: Jobs) -> None:
    batch, other = jobs.new(kind="batch"), jobs.new(kind="eval_run")
    assert claimed(jobs, kinds=["eval_run"]) == other
    assert claimed(jobs, kinds=["eval_run"]) is None
    assert claimed(jobs, kinds=["batch", "eval_run"]) == batch


def test_a_claim_starts_the_job_and_leases_it(jobs: Jobs) -> None:
    job_id = jobs.new()
    job = jobs.leases.claim("r1")
    assert job is not None and job.id == job_id
    assert (job.status, job.attempts, job.lease_owner) == ("in_progress", 1, "r1")
    assert job.started_at == jobs.clock.now
    assert job.lease_expires_at is not None
    assert (job.lease_expires_at - jobs.clock.now).total_seconds() == LEASE_S


def test_heartbeats_keep_a_lease_and_its_expiry_frees_the_job(jobs: Jobs) -> None:
    job_id = jobs.new()
    assert claimed(jobs, "r1") == job_id
    jobs.clock.advance(LEASE_S - 1)
    assert jobs.leases.heartbeat(job_id, "r1").held
    jobs.clock.advance(LEASE_S - 1)  # past the first lease, within the renewed one
    assert claimed(jobs, "r2") is None
    jobs.clock.advance(2)
    assert claimed(jobs, "r2") == job_id
    assert not jobs.leases.heartbeat(job_id, "r1").held
    resumed = jobs.store.get(job_id, OWNER)
    assert (resumed.attempts, resumed.lease_owner, resumed.status) == (2, "r2", "in_progress")


def test_an_expired_job_goes_before_newer_queued_ones(jobs: Jobs) -> None:
    first = jobs.new()
    assert claimed(jobs, "r1") == first
    second = jobs.new()
    jobs.clock.advance(LEASE_S + 1)
    assert claimed(jobs, "r2") == first
    assert claimed(jobs, "r2") == second


def test_a_released_job_is_claimable_at_once_and_keeps_its_attempts(jobs: Jobs) -> None:
    job_id = jobs.new()
    assert claimed(jobs, "r1") == job_id
    assert jobs.leases.release(job_id, "r1", "stopping")
    assert not jobs.leases.release(job_id, "r1", "twice")
    job = jobs.leases.claim("r2")
    assert job is not None and job.id == job_id and job.attempts == 1


def test_the_leases_of_a_runner_known_dead_end_at_once(jobs: Jobs) -> None:
    mine, other = jobs.new(), jobs.new()
    assert claimed(jobs, "dead") == mine
    assert claimed(jobs, "alive") == other
    assert jobs.leases.release_runner("dead") == [mine]
    assert claimed(jobs, "next") == mine
    assert jobs.store.get(mine, OWNER).attempts == 2  # a crash counts
    assert claimed(jobs, "next") is None  # `alive` still holds its job


def test_a_job_is_failed_once_its_attempts_are_used_up(jobs: Jobs) -> None:
    job_id = jobs.new()
    for runner in ("r1", "r2", "r3"):
        assert claimed(jobs, runner) == job_id
        assert jobs.leases.fail_exhausted() == []  # its lease is still running
        jobs.clock.advance(LEASE_S + 1)
    assert claimed(jobs, "r4") is None
    assert jobs.leases.fail_exhausted() == [job_id]
    job = jobs.store.get(job_id, OWNER)
    assert job.status == "failed" and job.error is not None
    assert job.error["code"] == "runner_lost"


def test_a_cancelled_job_whose_runner_died_ends_cancelled(jobs: Jobs) -> None:
    job_id = jobs.new()
    assert claimed(jobs, "r1") == job_id
    jobs.store.cancel(job_id, OWNER)
    jobs.clock.advance(LEASE_S + 1)
    resumed = jobs.leases.claim("r2")
    assert resumed is not None and resumed.status == "cancelling"
    jobs.clock.advance(LEASE_S + 1)
    jobs.leases.claim("r3")
    jobs.clock.advance(LEASE_S + 1)
    assert jobs.leases.fail_exhausted() == [job_id]
    assert jobs.status(job_id) == "cancelled"


def test_a_cancel_accepted_while_running_is_never_contradicted(jobs: Jobs) -> None:
    job_id = jobs.new()
    assert claimed(jobs, "r1") == job_id
    assert jobs.store.cancel(job_id, OWNER).status == "cancelling"
    # The runner finished everything before its next heartbeat brought the cancel.
    assert jobs.leases.finish(job_id, "r1", "completed", message="all done")
    job = jobs.store.get(job_id, OWNER)
    assert job.status == "cancelled" and job.finished_at == jobs.clock.now
    last = jobs.store.events(job_id, OWNER).events[-1].message
    assert last == "cancelled (it had finished its work): all done"
