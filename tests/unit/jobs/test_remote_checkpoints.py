"""Training checkpoints of a fine-tune on a node without the gateway's disk, kept at the gateway
so that a resume on another node goes on from them: the archive's check (only the three files
of a checkpoint, no links, no paths, bounded), the gateway's rules on ``/internal/checkpoints``
on a real SQLite catalog and store (only a runner holding the fine-tune keeps or reads its
checkpoint, one per job, the owner's file, deleted once the job has finished), the storage
seam against the real routes, and a tiny real LoRA run stopped on one "node" and resumed on a
fresh one from the step kept at the gateway."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from lmaas.db import create_db_engine, session_factory, upgrade_to_head
from lmaas.errors import ConflictError, InvalidRequestError
from lmaas.gateway.errors import install_error_handlers
from lmaas.gateway.routes import internal
from lmaas.gateway.runner_access import RunnerAccess
from lmaas.jobs import checkpoint_archive as archive
from lmaas.jobs.checkpoint_store import PURPOSE, JobCheckpoints
from lmaas.jobs.leases import JobLeases
from lmaas.jobs.storage import (
    CHECKPOINT_STEP_HEADER,
    CHECKPOINTS_ROUTE,
    CheckpointRefused,
    GatewayJobFiles,
    LocalJobFiles,
    catalog_lookup,
)
from lmaas.jobs.store import COMPLETED, JobStore
from lmaas.store.blobs import BlobStore
from lmaas.store.catalog import Catalog
from lmaas.store.files import FileLimits, FileStore, Viewer
from lmaas.store.model_store import ModelStore
from lmaas.store.node_cache import NodeCache, Source
from tests.unit.jobs.fake_gateway import ADMIN, OTHER, RUNNERS, SECRET, URL

OWNER = "key-abc"
MAX_CHECKPOINT = 2 << 20  # above a state.json too large (1 MiB)


def state(step: int = 3, **extra: Any) -> bytes:
    body = {"step": step, "epoch": 0, "fingerprint": {"seed": 1}, "metrics": {}} | extra
    return json.dumps(body).encode()


def tar_of(*members: tuple[str, bytes] | tarfile.TarInfo) -> bytes:
    """A plain tar of (name, data) files and of bare headers (links, directories)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def good_files(step: int = 3) -> list[tuple[str, bytes]]:
    return [
        (archive.WEIGHTS, b"W" * 1000 + bytes([step])),
        (archive.OPTIMIZER, b"O" * 3000),
        (archive.STATE, state(step)),
    ]


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_the_archive_names_are_the_training_checkpoint_s() -> None:
    from lmaas.training import checkpoints

    assert (archive.PREFIX, archive.WEIGHTS, archive.OPTIMIZER, archive.STATE) == (
        checkpoints.PREFIX,
        checkpoints.WEIGHTS,
        checkpoints.OPTIMIZER,
        checkpoints.STATE,
    )


def test_a_checkpoint_folder_goes_through_a_tar_and_back(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "checkpoint-00000003"
    folder.mkdir(parents=True)
    for name, data in good_files():
        (folder / name).write_bytes(data)
    sent = b"".join(archive.archive_chunks(folder))
    assert len(sent) == archive.archive_length(folder)
    made = archive.unpack(io.BytesIO(sent), tmp_path / "b")
    assert made == tmp_path / "b" / "checkpoint-00000003"
    assert {p.name: p.read_bytes() for p in made.iterdir()} == dict(good_files())
    assert [p.name for p in (tmp_path / "b").iterdir()] == [made.name]  # no work folder left


BAD_ARCHIVES = {
    "traversal": tar_of(*good_files()[:2], ("../state.json", state())),
    "absolute": tar_of(*good_files()[:2], ("/state.json", state())),
    "dot-slash": tar_of(*good_files()[:2], ("./state.json", state())),
    "in a folder": tar_of(*good_files()[:2], ("sub/state.json", state())),
    "symlink": tar_of(*good_files(), link("x.json", "/etc/passwd", tarfile.SYMTYPE)),
    "symlink named as a file": tar_of(
        *good_files()[:2], link(archive.STATE, "/etc/passwd", tarfile.SYMTYPE)
    ),
    "hard link": tar_of(*good_files()[:2], link(archive.STATE, "../x", tarfile.LNKTYPE)),
    "directory": tar_of(*good_files()[:2], link(archive.STATE, "", tarfile.DIRTYPE)),
    "extra name": tar_of(*good_files(), ("run.py", b"import os")),
    "twice": tar_of(*good_files(), (archive.WEIGHTS, b"again")),
    "missing": tar_of(*good_files()[:2]),
    "state not JSON": tar_of(*good_files()[:2], (archive.STATE, b"\x80 not json")),
    "state without a step": tar_of(*good_files()[:2], (archive.STATE, state(step=-1))),
    "state too large": tar_of(
        *good_files()[:2], (archive.STATE, state(pad="x" * archive.MAX_STATE_BYTES))
    ),
    "data after the end": tar_of(*good_files()) + b"trailing bytes",
    "not a tar": b"PK\x03\x04 a zip, not a tar" + bytes(600),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_a_bad_archive_is_not_unpacked(case: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError):
        archive.unpack(io.BytesIO(BAD_ARCHIVES[case]), tmp_path / "ck")
    assert list((tmp_path / "ck").iterdir()) == []
    assert not (tmp_path / "etc").exists() and not (tmp_path / "x.json").exists()


# -- the gateway's rules, on a real catalog and store ---------------------------------------------


@dataclass
class Gateway:
    tmp: Path
    sessions: Any
    store: ModelStore
    files: FileStore
    jobs: JobStore
    leases: JobLeases
    checkpoints: JobCheckpoints
    app: FastAPI

    def client(self) -> TestClient:
        return TestClient(self.app, base_url=URL)

    def kept_files(self) -> list[str]:
        return [f.id for f in self.files.list(ADMIN).files if f.purpose == PURPOSE]


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    engine = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
    upgrade_to_head(engine)
    sessions = session_factory(engine)
    store = ModelStore(Catalog(sessions), BlobStore(tmp_path / "home"), max_upload_bytes=1 << 22)
    files = FileStore(sessions, store, FileLimits(1 << 20, 1 << 16))
    jobs = JobStore(sessions)
    checkpoints = JobCheckpoints(jobs.sessions, files)
    files.add_user(checkpoints.file_in_use)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(internal.router)
    app.state.runner_access = RunnerAccess(
        RUNNERS.get,
        ("batch", "fine_tune", "quantize"),
        jobs,
        files,
        store,
        checkpoints=checkpoints,
        max_checkpoint_bytes=MAX_CHECKPOINT,
    )
    leases = JobLeases(sessions, lease_seconds=30, max_attempts=3)
    yield Gateway(tmp_path, sessions, store, files, jobs, leases, checkpoints, app)
    engine.dispose()


def held_job(gw: Gateway, kind: str = "fine_tune", runner: str = "r1", **given: Any) -> str:
    prefix = "ftjob" if kind == "fine_tune" else kind
    job = gw.jobs.create(kind, id_prefix=prefix, owner_key_id=OWNER, input=given)
    claimed = gw.leases.claim(runner, [kind])
    assert claimed is not None and claimed.id == job.id
    return job.id


def post(client: TestClient, job: str, body: bytes, token: str = SECRET, **headers: str) -> Any:
    return client.post(
        CHECKPOINTS_ROUTE,
        params={"job": job},
        content=body,
        headers={"Authorization": f"Bearer {token}", **headers},
    )


def fetch(client: TestClient, job: str, token: str = SECRET, **params: Any) -> Any:
    return client.get(
        CHECKPOINTS_ROUTE,
        params={"job": job, **params},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_a_runner_keeps_and_reads_only_the_checkpoints_of_fine_tunes_it_holds(
    gw: Gateway,
) -> None:
    job = held_job(gw)
    first, second = tar_of(*good_files(2)), tar_of(*good_files(4))
    with gw.client() as client:
        assert fetch(client, job).status_code == 404  # nothing kept yet
        # Another runner, a stale secret, a job that does not exist: nothing kept.
        assert post(client, job, first, OTHER).status_code == 403
        assert post(client, job, first, "stale").status_code == 401
        assert post(client, "ftjob-nope", first).status_code == 403
        assert gw.kept_files() == []

        r = post(client, job, first)
        assert r.status_code == 201, r.text
        assert r.json() == {"job": job, "step": 2, "bytes": len(first)}
        (kept,) = gw.files.list(ADMIN).files
        assert (kept.owner_key_id, kept.purpose) == (OWNER, PURPOSE)  # the job's owner's
        # The owner cannot delete it while the job runs.
        with pytest.raises(ConflictError):
            gw.files.delete(kept.id, Viewer(OWNER))

        # The next one replaces it: one file per job.
        assert post(client, job, second).status_code == 201
        assert gw.kept_files() != [kept.id] and len(gw.kept_files()) == 1
        r = fetch(client, job)
        assert r.status_code == 200 and r.content == second
        assert r.headers[CHECKPOINT_STEP_HEADER] == "4"
        assert fetch(client, job, after=3).status_code == 200
        r = fetch(client, job, after=4)
        assert r.status_code == 404 and r.json()["error"]["code"] == "checkpoint_not_found"
        assert fetch(client, job, OTHER).status_code == 403

        # Once the job has ended it is nobody's: refused, then swept.
        assert gw.leases.finish(job, "r1", COMPLETED, message="done")
        assert post(client, job, first).status_code == 403
        assert fetch(client, job).status_code == 403
    assert gw.checkpoints.sweep() == 1
    assert gw.kept_files() == [] and gw.checkpoints.newest(job) is None
    assert gw.checkpoints.sweep() == 0


def test_only_fine_tunes_keep_checkpoints(gw: Gateway) -> None:
    batch = held_job(gw, "batch")
    with gw.client() as client:
        r = post(client, batch, tar_of(*good_files()))
        assert r.status_code == 403, r.text
        assert r.json()["error"]["type"] == "permission_error"
    assert gw.kept_files() == []


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_a_bad_archive_is_refused_and_nothing_is_kept(gw: Gateway, case: str) -> None:
    job = held_job(gw)
    blobs_before = set(gw.store.blobs.digests())
    with gw.client() as client:
        r = post(client, job, BAD_ARCHIVES[case])
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_archive"
    assert gw.kept_files() == [] and gw.checkpoints.newest(job) is None
    assert set(gw.store.blobs.digests()) == blobs_before


def test_a_checkpoint_too_large_is_refused_with_413(gw: Gateway) -> None:
    job = held_job(gw)
    big = tar_of((archive.WEIGHTS, b"W" * MAX_CHECKPOINT), *good_files()[1:])
    with gw.client() as client:
        r = post(client, job, big)  # its length declared: refused before it is read
        assert r.status_code == 413 and r.json()["error"]["code"] == "checkpoint_too_large"

        def streamed() -> Iterator[bytes]:  # no length declared: refused as it goes
            yield from (big[i : i + 65536] for i in range(0, len(big), 65536))

        r = post(client, job, streamed())  # type: ignore[arg-type]
        assert r.status_code == 413, r.text
    assert gw.kept_files() == []


def test_a_failed_upload_keeps_the_previous_checkpoint(gw: Gateway) -> None:
    job = held_job(gw)
    with gw.client() as client:
        assert post(client, job, tar_of(*good_files(2))).status_code == 201
        assert post(client, job, BAD_ARCHIVES["traversal"]).status_code == 400
        r = fetch(client, job)
    assert r.headers[CHECKPOINT_STEP_HEADER] == "2" and len(gw.kept_files()) == 1


def test_a_deleted_job_s_checkpoint_is_swept(gw: Gateway) -> None:
    job = held_job(gw)
    with gw.client() as client:
        assert post(client, job, tar_of(*good_files())).status_code == 201
    assert gw.checkpoints.sweep() == 0  # running: kept
    gw.leases.finish(job, "r1", COMPLETED, message="done")
    gw.jobs.delete(job, ADMIN)
    assert gw.checkpoints.sweep() == 1 and gw.kept_files() == []


# -- the storage seam ---------------------------------------------------------------------------


def gateway_files(gw: Gateway, client: TestClient, node: Path, token: str) -> GatewayJobFiles:
    return GatewayJobFiles(
        catalog_lookup(gw.sessions),
        NodeCache(node),
        Source(URL, token),
        versions=gw.store.catalog.get_version,
        client=client,  # an httpx client over the app
    )


def test_the_seam_keeps_a_folder_and_fetches_it_on_another_node(gw: Gateway) -> None:
    job = held_job(gw)
    folder = gw.tmp / "node-a" / "checkpoints" / "checkpoint-00000005"
    folder.mkdir(parents=True)
    for name, data in good_files(5):
        (folder / name).write_bytes(data)
    with gw.client() as client:
        files = gateway_files(gw, client, gw.tmp / "node-a", SECRET)
        assert files.keep_checkpoint(job, folder) is True
        fresh = gw.tmp / "node-b" / "jobs" / job / "checkpoints"
        assert files.fetch_checkpoint(job, fresh, after=5) is None
        made = files.fetch_checkpoint(job, fresh, after=None)
        assert made == fresh / "checkpoint-00000005"
        assert {p.name: p.read_bytes() for p in made.iterdir()} == dict(good_files(5))
        other = gateway_files(gw, client, gw.tmp / "node-c", OTHER)
        with pytest.raises(CheckpointRefused) as refused:
            other.keep_checkpoint(job, folder)
        assert refused.value.status == 403
        with pytest.raises(CheckpointRefused):
            other.fetch_checkpoint(job, gw.tmp / "node-c", after=None)


def test_local_job_files_keep_nothing_elsewhere(gw: Gateway, tmp_path: Path) -> None:
    local = LocalJobFiles(gw.files, gw.store)
    assert local.keep_checkpoint("ftjob-1", tmp_path) is False
    assert local.fetch_checkpoint("ftjob-1", tmp_path / "ck", after=None) is None
    assert not (tmp_path / "ck").exists() and gw.kept_files() == []


# -- a real run stopped on one node and resumed on another ----------------------------------------


@dataclass
class Recorded:
    events: list[tuple[str, str, dict[str, Any] | None]]
    steps: list[int]
    stop_at: int

    def reports(self) -> Any:
        from lmaas.jobs.fine_tune_work import Reports

        return Reports(
            lambda level, message, data: self.events.append((level, message, data)),
            lambda step, total: self.steps.append(step),
            lambda: bool(self.steps) and self.steps[-1] >= self.stop_at,
        )

    def messages(self) -> list[str]:
        return [message for _, message, _ in self.events]


def tiny_base(gw: Gateway) -> Any:
    from tests.unit.training.conftest import make_tokenizer, tiny_llama

    tokenizer = make_tokenizer()
    folder = gw.tmp / "tiny-base"
    tiny_llama(len(tokenizer)).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return gw.store.import_folder("tiny", folder)


def run_on_node(
    gw: Gateway, client: TestClient, node: str, token: str, given: dict[str, Any], stop_at: int
) -> Recorded:
    from lmaas.jobs.fine_tune_work import FineTuneWork

    files = gateway_files(gw, client, gw.tmp / node, token)
    work = FineTuneWork(
        Catalog(gw.sessions), files, gw.tmp / node / "jobs" / given["job_id"], given
    )
    recorded = Recorded([], [], stop_at)
    assert work.run(recorded.reports()).status == "cancelled"
    return recorded


def test_a_fine_tune_resumed_on_a_fresh_node_goes_on_from_the_kept_step(gw: Gateway) -> None:
    from lmaas.training.checkpoints import CheckpointMismatch
    from tests.unit.training.conftest import FACTS

    base = tiny_base(gw)
    lines = "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in FACTS)
    train = gw.files.add(
        [lines.encode()], purpose="fine-tune", filename="t.jsonl", owner_key_id=OWNER
    ).id
    given: dict[str, Any] = {
        "seed": 3,
        "method": "lora",
        "base": {"model": base.model, "number": base.number},
        "training_file": train,
        "validation_file": None,
        "max_seq_len": 64,
        "method_settings": {"lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "hyperparameters": {"n_epochs": 2, "batch_size": 2, "learning_rate": 0.01},
        "checkpoint_every_steps": 2,
        "output_model": "tiny-ft",
        "quantization": "F16",
    }
    job = held_job(gw, **given)
    given |= {"job_id": job, "owner_key_id": OWNER}
    with gw.client() as client:
        # Node A: steps 1-3; the checkpoint of step 2 is kept at the gateway, the one written
        # as the run stops (step 3) stays on the node.
        first = run_on_node(gw, client, "node-a", SECRET, given, stop_at=3)
        assert first.steps == [1, 2, 3]
        assert "checkpoint at step 2 (kept by the gateway)" in first.messages()
        assert "checkpoint at step 3" in first.messages()
        assert gw.checkpoints.newest(job).step == 2  # type: ignore[union-attr]

        # Node A is gone: runner r2 takes the job over on node B, with an empty work dir.
        gw.leases.release_runner("r1")
        claimed = gw.leases.claim("r2", ["fine_tune"])
        assert claimed is not None and claimed.id == job
        assert fetch(client, job, SECRET).status_code == 403  # r1 holds it no more
        second = run_on_node(gw, client, "node-b", OTHER, given, stop_at=3)
        assert "fetched the checkpoint of step 2" in second.messages()
        resumed = [d for _, _, d in second.events if d and "resumed_from_step" in d]
        assert resumed == [{"resumed_from_step": 2}]
        assert second.steps == [3]  # on from step 2, not from 0
        fetched = gw.tmp / "node-b" / "jobs" / job / "checkpoints" / "checkpoint-00000002"
        on_a = gw.tmp / "node-a" / "jobs" / job / "checkpoints" / "checkpoint-00000002"
        assert (fetched / archive.WEIGHTS).read_bytes() == (on_a / archive.WEIGHTS).read_bytes()

        # Another run (other hyperparameters) is refused the kept checkpoint.
        other = given | {"hyperparameters": {**given["hyperparameters"], "learning_rate": 0.5}}
        with pytest.raises(CheckpointMismatch):
            run_on_node(gw, client, "node-c", OTHER, other, stop_at=3)
