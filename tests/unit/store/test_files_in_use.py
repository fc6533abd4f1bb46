"""The seam the jobs code fills: a file a job uses cannot be deleted (409), with a fake job
registry standing in for the jobs (on a SQLite catalog in a temporary directory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lmaas.db import create_db_engine, session_factory, upgrade_to_head
from lmaas.errors import ConflictError, NotFoundError
from lmaas.store.blobs import BlobStore
from lmaas.store.catalog import Catalog
from lmaas.store.files import FileLimits, FileStore, Viewer
from lmaas.store.model_store import ModelStore

ALICE = Viewer("aaaaaaaaaaaa")


class FakeJobs:
    """Jobs as the file store sees them: which file each running job reads."""

    def __init__(self) -> None:
        self.running: dict[str, str] = {}  # job id -> file id
        self.asked: list[str] = []

    def user(self, file_id: str) -> str | None:
        self.asked.append(file_id)
        jobs = sorted(job for job, used in self.running.items() if used == file_id)
        return f"job {jobs[0]} is running" if jobs else None


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileStore]:
    db = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
    upgrade_to_head(db)
    sessions = session_factory(db)
    models = ModelStore(Catalog(sessions), BlobStore(tmp_path), max_upload_bytes=1 << 20)
    yield FileStore(sessions, models, FileLimits(max_bytes=1 << 20, max_line_bytes=1024))
    db.dispose()


def test_no_registered_user_means_not_in_use(files: FileStore) -> None:
    assert files.in_use("file-" + "0" * 24) is None


def test_a_file_a_job_runs_on_cannot_be_deleted_until_the_job_ends(files: FileStore) -> None:
    jobs = FakeJobs()
    files.add_user(jobs.user)
    kept = files.add([b"x"], purpose="user_data", filename="a", owner_key_id=ALICE.key_id)
    other = files.add([b"y"], purpose="user_data", filename="b", owner_key_id=ALICE.key_id)
    jobs.running["job-1"] = kept.id

    assert files.in_use(kept.id) == "job job-1 is running"
    with pytest.raises(ConflictError) as caught:
        files.delete(kept.id, ALICE)
    assert caught.value.code == "file_in_use" and "job job-1 is running" in caught.value.message
    assert files.get(kept.id, ALICE) == kept
    _, handle = files.open(kept.id, ALICE)
    with handle:
        assert handle.read() == b"x"

    files.delete(other.id, ALICE)  # a file no job uses goes
    with pytest.raises(NotFoundError):
        files.get(other.id, ALICE)

    del jobs.running["job-1"]
    files.delete(kept.id, ALICE)
    with pytest.raises(NotFoundError):
        files.get(kept.id, ALICE)
    assert jobs.asked == [kept.id, kept.id, other.id, kept.id]


def test_the_first_user_with_a_reason_answers(files: FileStore) -> None:
    files.add_user(lambda _id: None)
    files.add_user(lambda file_id: f"batch for {file_id}")
    files.add_user(lambda _id: "never asked")
    assert files.in_use("file-x") == "batch for file-x"


def test_a_hidden_file_is_not_found_before_it_is_in_use(files: FileStore) -> None:
    jobs = FakeJobs()
    files.add_user(jobs.user)
    f = files.add([b"x"], purpose="user_data", filename="a", owner_key_id=ALICE.key_id)
    jobs.running["job-1"] = f.id
    with pytest.raises(NotFoundError):
        files.delete(f.id, Viewer("bbbbbbbbbbbb"))
    assert jobs.asked == []
    with pytest.raises(ConflictError):
        files.delete(f.id, Viewer("bbbbbbbbbbbb", admin=True))
