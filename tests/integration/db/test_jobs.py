"""The job store and the dispatcher on SQLite and PostgreSQL: owners and pages, cancel at each
stage, the event log, items of a resumed run, leases through a runner's death, and claims
that never hand one job to two runners."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, select

from lmaas.db import session_factory, upgrade_to_head
from lmaas.errors import ConflictError, InvalidRequestError, NotFoundError
from lmaas.jobs.leases import Item, JobLeases
from lmaas.jobs.store import JobStore
from lmaas.jobs.tables import JobRow
from lmaas.store.files import Viewer
from tests.clock import FakeClock

ALICE, BOB = Viewer("aaaaaaaaaaaa"), Viewer("bbbbbbbbbbbb")
OPEN, ADMIN = Viewer(None), Viewer("cccccccccccc", admin=True)
FILE = "file-00000000000001aaaaaaaaaa"


class Jobs:
    def __init__(self, engine: Engine) -> None:
        upgrade_to_head(engine)
        self.clock = FakeClock()
        sessions = session_factory(engine)
        self.store = JobStore(sessions, clock=self.clock)
        self.leases = JobLeases(sessions, lease_seconds=30, max_attempts=2, clock=self.clock)

    def new(self, owner: Viewer = ALICE, *, priority: int = 0, kind: str = "batch") -> str:
        self.clock.advance(1)
        job = self.store.create(
            kind,
            id_prefix=kind,
            owner_key_id=owner.key_id,
            input={"endpoint": "/v1/embeddings"},
            input_file_id=FILE,
            priority=priority,
            total=3,
        )
        return job.id


@pytest.fixture
def jobs(db_engine: Engine) -> Jobs:
    return Jobs(db_engine)


def test_owners_see_their_own_jobs_newest_first_in_pages(jobs: Jobs) -> None:
    a1, b1, a2, o1 = jobs.new(ALICE), jobs.new(BOB), jobs.new(ALICE), jobs.new(OPEN)
    evals = jobs.new(ALICE, kind="eval_run")
    assert [j.id for j in jobs.store.list(ALICE, kind="batch").jobs] == [a2, a1]
    assert [j.id for j in jobs.store.list(ALICE).jobs] == [evals, a2, a1]
    assert [j.id for j in jobs.store.list(OPEN).jobs] == [o1]
    page = jobs.store.list(ADMIN, kind="batch", limit=2)
    assert [j.id for j in page.jobs] == [o1, a2] and page.has_more
    rest = jobs.store.list(ADMIN, kind="batch", limit=2, after=a2)
    assert [j.id for j in rest.jobs] == [b1, a1] and not rest.has_more
    assert jobs.store.get(a1, ADMIN).owner_key_id == ALICE.key_id
    for viewer, job in ((BOB, a1), (OPEN, a1), (ALICE, o1)):
        with pytest.raises(NotFoundError):
            jobs.store.get(job, viewer)
    with pytest.raises(NotFoundError) as caught:
        jobs.store.get(evals, ALICE, kind="batch")
    assert caught.value.param == "batch_id"
    with pytest.raises(InvalidRequestError):
        jobs.store.list(ALICE, after="nope")


def test_cancel_a_queued_job_at_once_a_running_one_through_its_runner(jobs: Jobs) -> None:
    queued, running = jobs.new(), jobs.new()
    assert jobs.leases.claim("r1") is not None  # the older one: `queued`
    claimed = jobs.leases.claim("r1")
    assert claimed is not None and claimed.id == running
    first = jobs.store.cancel(queued, ALICE)
    assert (first.status, first.finished_at) == ("cancelling", None)
    assert jobs.leases.heartbeat(queued, "r1").cancel_requested
    jobs.clock.advance(1)
    assert jobs.store.cancel(queued, ALICE).cancel_requested_at == first.cancel_requested_at
    assert jobs.leases.finish(queued, "r1", "cancelled", message="stopped")
    with pytest.raises(ConflictError) as caught:
        jobs.store.cancel(queued, ALICE)
    assert caught.value.status_code == 409 and caught.value.code == "job_finished"
    waiting = jobs.new()
    done = jobs.store.cancel(waiting, ALICE)
    assert done.status == "cancelled" and done.finished_at == jobs.clock.now
    assert jobs.leases.claim("r2") is None  # nothing queued is left
    with pytest.raises(NotFoundError):
        jobs.store.cancel(running, BOB)


def test_the_event_log_pages_in_order(jobs: Jobs) -> None:
    job = jobs.new()
    for i in range(5):
        jobs.store.add_event(job, "info", f"step {i}", {"done": i})
    page = jobs.store.events(job, ALICE, limit=3)
    assert [e.seq for e in page.events] == [1, 2, 3] and page.has_more
    assert page.events[0].message == "queued" and page.events[1].metrics == {"done": 0}
    rest = jobs.store.events(job, ALICE, after=3)
    assert [e.message for e in rest.events] == ["step 2", "step 3", "step 4"]
    assert not rest.has_more
    with pytest.raises(NotFoundError):
        jobs.store.events(job, BOB)


def test_a_resumed_run_sees_the_items_of_the_one_before(jobs: Jobs) -> None:
    job = jobs.new()
    assert jobs.leases.claim("r1") is not None
    assert jobs.leases.resume(job, "r1", 3) is not None
    items = [Item("c", 3, False, '{"c":1}'), Item("a", 1, True, '{"a":1}', 5, 2)]
    assert jobs.leases.record(job, "r1", items, eta_at=None)
    jobs.clock.advance(31)  # r1 died: its lease expires
    resumed = jobs.leases.claim("r2")
    assert resumed is not None and resumed.id == job and resumed.attempts == 2
    resume = jobs.leases.resume(job, "r2", 3)
    assert resume is not None and resume.done_ids == {"a", "c"} and resume.failed == 1
    info = jobs.store.get(job, ALICE)
    assert (info.progress.total, info.progress.done, info.progress.failed) == (3, 2, 1)
    # The dead runner comes back: its writes are refused.
    assert not jobs.leases.record(job, "r1", [Item("b", 2, True, "{}")], eta_at=None)
    assert not jobs.leases.heartbeat(job, "r1").held
    assert jobs.leases.record(job, "r2", [Item("b", 2, True, '{"b":1}', 1, 1)], eta_at=None)
    # A write retried after it went through stores and counts nothing twice.
    assert jobs.leases.record(job, "r2", [Item("b", 2, True, '{"b":2}', 1, 1)], eta_at=None)
    assert jobs.store.get(job, ALICE).progress.done == 3
    assert list(jobs.leases.outputs(job, ok=True)) == ['{"a":1}', '{"b":1}']
    assert list(jobs.leases.outputs(job, ok=False)) == ['{"c":1}']
    assert jobs.leases.usage(job) == (6, 3)
    assert jobs.leases.finish(job, "r2", "completed", message="done", drop_items=True)
    assert list(jobs.leases.outputs(job, ok=True)) == []
    messages = [e.message for e in jobs.store.events(job, ALICE).events]
    assert messages[-2].startswith("resumed by runner r2 (attempt 2 of 2): runner r1")


def test_a_job_whose_runner_keeps_dying_fails_with_a_clear_error(jobs: Jobs) -> None:
    job = jobs.new()
    for runner in ("r1", "r2"):
        assert jobs.leases.claim(runner) is not None
        jobs.clock.advance(31)
    assert jobs.leases.claim("r3") is None  # no attempt left
    assert jobs.leases.fail_exhausted() == [job]
    info = jobs.store.get(job, ALICE)
    assert info.status == "failed" and info.finished_at == jobs.clock.now
    assert info.error is not None and info.error["code"] == "runner_lost"
    assert "stopped 2 times" in info.error["message"] and "r2" in info.error["message"]
    assert jobs.store.file_in_use(FILE) is None


def test_a_file_is_in_use_until_its_job_finishes(jobs: Jobs) -> None:
    job = jobs.new()
    assert jobs.store.file_in_use(FILE) == f"batch {job} is queued"
    assert jobs.store.file_in_use("file-00000000000002bbbbbbbbbb") is None
    jobs.store.cancel(job, ALICE)
    assert jobs.store.file_in_use(FILE) is None


def test_metrics_queries_count_open_jobs_and_list_finished_ones(jobs: Jobs) -> None:
    since = jobs.clock.now
    jobs.new(), jobs.new()
    cancelled = jobs.new()
    jobs.leases.claim("r1")
    jobs.store.cancel(cancelled, ALICE)
    assert jobs.store.status_counts() == {("batch", "queued"): 1, ("batch", "in_progress"): 1}
    assert [j.id for j in jobs.store.finished_since(since)] == [cancelled]


def test_concurrent_claims_hand_out_each_job_once(jobs: Jobs) -> None:
    ids = {jobs.new() for _ in range(6)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all(runner: str) -> None:
        while (job := jobs.leases.claim(runner)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"r{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)


# PostgreSQL only: SQLite has one writer at a time (BEGIN IMMEDIATE), so its claims are
# serialized instead and there is no row lock to skip.
@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)
def test_a_claim_skips_a_job_another_transaction_has_locked(jobs: Jobs, db_engine: Engine) -> None:
    """PostgreSQL's SKIP LOCKED: a claim does not wait for a row another runner is claiming."""
    first, second = jobs.new(), jobs.new()
    with session_factory(db_engine).begin() as session:
        session.scalar(select(JobRow).where(JobRow.id == first).with_for_update())
        got: list[str | None] = []
        thread = threading.Thread(
            target=lambda: got.append(getattr(jobs.leases.claim("r2"), "id", None))
        )
        thread.start()
        thread.join(timeout=10)
        assert got == [second]
