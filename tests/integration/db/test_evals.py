"""Evals, their runs as jobs, output items and the evaluations attached to store versions, on
SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from lmaas.db import session_factory, upgrade_to_head
from lmaas.errors import ConflictError, InvalidRequestError, NotFoundError
from lmaas.jobs.eval_store import EvalStore
from lmaas.jobs.leases import Item, JobLeases
from lmaas.jobs.store import JobStore
from lmaas.store.catalog import Catalog
from lmaas.store.evaluations import Evaluations
from lmaas.store.files import Viewer
from tests.clock import FakeClock
from tests.integration.db.test_catalog import META, digest

ALICE, BOB, ADMIN = Viewer("aaaaaaaaaaaa"), Viewer("bbbbbbbbbbbb"), Viewer(None, admin=True)
CONFIG = {"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": False}


class Env:
    def __init__(self, engine: Engine) -> None:
        upgrade_to_head(engine)
        self.clock = FakeClock()
        sessions = session_factory(engine)
        self.evals = EvalStore(sessions, clock=self.clock)
        self.jobs = JobStore(sessions, clock=self.clock)
        self.leases = JobLeases(sessions, lease_seconds=30, max_attempts=2, clock=self.clock)
        self.evaluations = Evaluations(sessions)
        self.catalog = Catalog(sessions)

    def new_eval(self, owner: Viewer = ALICE, name: str = "qa") -> str:
        self.clock.advance(1)
        return self.evals.create(
            owner_key_id=owner.key_id,
            name=name,
            data_source_config=CONFIG,
            testing_criteria=[{"type": "string_check", "name": "s"}],
            metadata={"team": "x"},
        ).id

    def new_run(self, eval_id: str, owner: Viewer = ALICE) -> str:
        self.clock.advance(1)
        return self.jobs.create(
            "eval_run",
            id_prefix="evalrun",
            owner_key_id=owner.key_id,
            input={},
            total=3,
            group_id=eval_id,
        ).id


@pytest.fixture
def env(db_engine: Engine) -> Env:
    return Env(db_engine)


def test_evals_belong_to_their_key_and_page_both_ways(env: Env) -> None:
    ids = [env.new_eval(name=f"e{i}") for i in range(3)]
    env.new_eval(BOB)
    newest = env.evals.list(ALICE, limit=2)
    assert [e.id for e in newest.evals] == ids[::-1][:2] and newest.has_more
    rest = env.evals.list(ALICE, after=newest.evals[-1].id, limit=2)
    assert [e.id for e in rest.evals] == [ids[0]] and not rest.has_more
    oldest = env.evals.list(ALICE, limit=5, newest_first=False)
    assert [e.id for e in oldest.evals] == ids
    assert len(env.evals.list(ADMIN, limit=10).evals) == 4
    with pytest.raises(NotFoundError):
        env.evals.get(ids[0], BOB)
    with pytest.raises(InvalidRequestError):
        env.evals.list(ALICE, after="not-an-id")
    updated = env.evals.update(ids[0], ALICE, name="renamed", metadata=None)
    assert (updated.name, updated.metadata) == ("renamed", {"team": "x"})
    env.evals.delete(ids[0], ALICE)
    with pytest.raises(NotFoundError):
        env.evals.get(ids[0], ALICE)


def test_runs_are_grouped_by_eval_and_their_items_page_in_order(env: Env) -> None:
    first, second = env.new_eval(), env.new_eval()
    runs = [env.new_run(first) for _ in range(2)]
    env.new_run(second)
    listed = env.jobs.list(ALICE, kind="eval_run", group_id=first, newest_first=False)
    assert [j.id for j in listed.jobs] == runs
    assert {j.group_id for j in listed.jobs} == {first}

    job = env.leases.claim("runner")
    assert job is not None and job.id == runs[0]
    items = [Item(str(i), i + 1, True, f'{{"i": {i}}}') for i in (2, 0, 1)]
    assert env.leases.record(job.id, "runner", items, eta_at=None)
    assert [line for line, _ in env.jobs.items(job.id, after=None, limit=10)] == [1, 2, 3]
    assert [line for line, _ in env.jobs.items(job.id, after=1, limit=1)] == [2]
    assert [line for line, _ in env.jobs.items(job.id, after=3, limit=5, newest_first=True)] == [
        2,
        1,
    ]
    with pytest.raises(ConflictError):  # still running
        env.jobs.delete(job.id, ALICE, kind="eval_run")
    assert env.leases.finish(job.id, "runner", "completed", message="done", result={"x": 1})
    env.jobs.merge_result(job.id, {"y": 2})
    assert env.jobs.get(job.id, ALICE).result == {"x": 1, "y": 2}
    env.jobs.delete(job.id, ALICE, kind="eval_run")
    with pytest.raises(NotFoundError):
        env.jobs.get(job.id, ALICE)
    assert env.jobs.items(job.id, after=None, limit=10) == []


def test_evaluations_attach_to_a_version_once_and_go_with_it(env: Env) -> None:
    env.catalog.create_model("m")
    version = env.catalog.add_version("m", META, digest(1))
    figures = {"result_counts": {"total": 2}, "per_testing_criteria_results": []}
    for _ in range(2):  # attaching the same run twice keeps one
        assert env.evaluations.attach(
            "m",
            version.number,
            run_id="evalrun_x",
            eval_id="eval_y",
            eval_name="qa",
            results=figures,
        )
    assert not env.evaluations.attach(
        "m", 99, run_id="evalrun_z", eval_id="eval_y", eval_name="qa", results=figures
    )
    (found,) = env.evaluations.of_version("m", version.number)
    assert (found.run_id, found.eval_name, found.results) == ("evalrun_x", "qa", figures)
    env.catalog.delete_version("m", version.number)
    with pytest.raises(NotFoundError):
        env.evaluations.of_version("m", version.number)
