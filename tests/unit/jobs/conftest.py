"""A job store and a dispatcher on a SQLite catalog in a temporary directory, on a clock the
tests move by hand."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmaas.db import create_db_engine, session_factory, upgrade_to_head
from lmaas.jobs.leases import JobLeases
from lmaas.jobs.store import JobStore
from lmaas.store.files import Viewer
from tests.clock import FakeClock

OWNER = Viewer("aaaaaaaaaaaa")
LEASE_S = 30.0


@dataclass
class Jobs:
    clock: FakeClock
    store: JobStore
    leases: JobLeases

    def new(self, *, priority: int = 0, kind: str = "fake", total: int = 0) -> str:
        """A queued job, created one second after the previous one."""
        self.clock.advance(1)
        job = self.store.create(
            kind,
            id_prefix=kind,
            owner_key_id=OWNER.key_id,
            input={"n": total},
            priority=priority,
            total=total,
        )
        return job.id

    def status(self, job_id: str) -> str:
        return self.store.get(job_id, OWNER).status


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[Jobs]:
    engine = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
    upgrade_to_head(engine)
    clock = FakeClock()
    sessions = session_factory(engine)
    yield Jobs(
        clock,
        JobStore(sessions, clock=clock),
        JobLeases(sessions, lease_seconds=LEASE_S, max_attempts=3, clock=clock),
    )
    engine.dispose()
