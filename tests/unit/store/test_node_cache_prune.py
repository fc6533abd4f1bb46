"""Pruning a node's cache: its size bound, the LRU order, pins held by live processes, folders of
hard links removed with their blobs, concurrent processes on one cache. Real files in tmp dirs;
the gateway is a fake behind httpx's MockTransport."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from pydantic import ValidationError

from lmaas.config import load_settings
from lmaas.config_cluster import ClusterSettings
from lmaas.controller.cluster.ray_host import HostSpec, ReplicaHost
from lmaas.jobs.context import JobContext, Outcome
from lmaas.jobs.runner import pins_per_job
from lmaas.jobs.storage import GatewayJobFiles
from lmaas.jobs.store import COMPLETED, JobInfo
from lmaas.store.catalog import VersionInfo
from lmaas.store.folder import FolderFile, manifest_bytes
from lmaas.store.node_cache import NodeCache, Source
from lmaas.store.node_prune import PINS_DIR, LeaseReleased, cache_lock, live_pins
from tests.unit.jobs.fake_gateway import FakeBlobGateway

SECRET = "node-s3cret"
SOURCE = Source("http://gw:8000", SECRET)
FORK = multiprocessing.get_context("fork")


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def data(tag: str, size: int = 1000) -> bytes:
    return (tag.encode() * size)[:size]


class Models:
    """GGUF files and Hugging Face folders served by a fake gateway."""

    def __init__(self) -> None:
        self.gateway = FakeBlobGateway({}, SECRET)

    def add(self, *blobs: bytes) -> None:
        for blob in blobs:
            self.gateway.blobs[sha(blob)[7:]] = blob

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.gateway.handle))

    def gguf(self, cache: NodeCache, blob: bytes, **kwargs: Any) -> Path:
        self.add(blob)
        files = [FolderFile("model.gguf", sha(blob), len(blob))]
        return cache.model_path(SOURCE, "gguf", sha(blob), files, self.client(), **kwargs)

    def folder(self, cache: NodeCache, files: dict[str, bytes], **kwargs: Any) -> Path:
        self.add(*files.values())
        listed = folder_files(files)
        manifest = sha(manifest_bytes(listed))
        return cache.model_path(SOURCE, "hf", manifest, listed, self.client(), **kwargs)


def folder_files(files: dict[str, bytes]) -> list[FolderFile]:
    return [FolderFile(name, sha(blob), len(blob)) for name, blob in sorted(files.items())]


def used(path: Path, seconds_ago: float) -> None:
    when = time.time() - seconds_ago
    os.utime(path, (when, when))


def blob_path(cache: NodeCache, blob: bytes) -> Path:
    return cache.blobs.path_for(sha(blob))


def held(cache: NodeCache) -> int:
    return cache.prune().held


A, B, C = data("a"), data("b"), data("c")


def test_the_bound_is_kept_least_recently_used_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models, cache = Models(), NodeCache(tmp_path, max_bytes=2500)
    models.gguf(cache, A)
    models.gguf(cache, B)
    used(blob_path(cache, A), 200)
    used(blob_path(cache, B), 100)
    assert models.gguf(cache, A).read_bytes() == A  # cached, and now the most recently used
    assert models.gateway.fetches.count(sha(A)[7:]) == 1
    with caplog.at_level(logging.INFO, logger="lmaas.store.node_cache"):
        models.gguf(cache, C)
    assert not blob_path(cache, B).exists()
    assert blob_path(cache, A).read_bytes() == A and blob_path(cache, C).read_bytes() == C
    assert held(cache) == 2000
    # Evicted before C's download, to make its room.
    assert "evicted 1 blobs and 0 folders (1000 bytes); 1000 bytes held" in caplog.text
    # Unbounded (0): nothing goes.
    unbounded = NodeCache(tmp_path / "other", max_bytes=0)
    for blob in (A, B, C):
        models.gguf(unbounded, blob)
    assert held(unbounded) == 3000


def test_pinned_blobs_survive_and_an_unmet_bound_only_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models, cache = Models(), NodeCache(tmp_path, max_bytes=1500)
    first, second = cache.lease(), cache.lease()
    models.gguf(cache, A, lease=first)
    with caplog.at_level(logging.WARNING, logger="lmaas.store.node_cache"):
        path = models.gguf(cache, B, lease=second)
    assert "holds 2000 bytes, over its bound of 1500" in caplog.text
    assert path.read_bytes() == B and blob_path(cache, A).read_bytes() == A
    models.gguf(cache, C)  # pinned by its call only: the next prune takes it
    assert blob_path(cache, C).exists()
    assert held(cache) == 2000 and not blob_path(cache, C).exists()
    used(blob_path(cache, A), 500)
    before = time.time()
    first.release()  # A is marked used as the lease lets it go
    assert blob_path(cache, A).stat().st_mtime >= before - 1
    first.release()  # twice is harmless
    assert held(cache) == 1000
    assert not blob_path(cache, A).exists() and blob_path(cache, B).exists()
    second.release()
    assert not list((tmp_path / PINS_DIR).iterdir())


def test_room_is_made_before_a_download_of_known_size(tmp_path: Path) -> None:
    models, cache = Models(), NodeCache(tmp_path, max_bytes=2500)
    models.gguf(cache, A)
    models.gguf(cache, B)
    used(blob_path(cache, A), 200)
    used(blob_path(cache, B), 100)
    held_at_fetch: list[int] = []

    def watching(request: httpx.Request) -> httpx.Response:
        blobs = cache.blobs.blobs_dir.glob("sha256-*")
        held_at_fetch.append(sum(path.stat().st_size for path in blobs))
        return models.gateway.handle(request)

    models.add(C)
    listed = [FolderFile("model.gguf", sha(C), len(C))]
    client = httpx.Client(transport=httpx.MockTransport(watching))
    cache.model_path(SOURCE, "gguf", sha(C), listed, client)
    # A went before C came: 1000 held + 1000 coming, never 3000 on a bound of 2500.
    assert held_at_fetch == [1000]
    assert not blob_path(cache, A).exists() and held(cache) == 2000


def test_a_pin_file_that_cannot_be_written_keeps_the_pins_it_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models, cache = Models(), NodeCache(tmp_path, max_bytes=1)
    unbounded = NodeCache(tmp_path)
    models.gguf(unbounded, A)
    models.gguf(unbounded, B)
    lease = cache.lease()
    lease.add([sha(A)])
    real_pwrite = os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError, match="No space"):
        lease.add([sha(B)])
    assert lease.digests == {sha(A)}
    assert len(list((tmp_path / PINS_DIR).iterdir())) == 1
    assert cache.prune().held == 1000 and blob_path(cache, A).exists()  # A is still pinned

    def short(fd: int, data: bytes, offset: int) -> int:
        return real_pwrite(fd, bytes(data[:7]), offset)  # a few bytes a call

    monkeypatch.setattr(os, "pwrite", short)
    models.gguf(unbounded, B)
    lease.add([sha(B)])  # written now (not skipped as pinned already), short writes and all
    assert cache.prune().held == 2000
    lease.release()
    assert cache.prune().held == 0


def _pin_and_wait(root: str, digest: str, ready: Any, done: Any) -> None:
    NodeCache(Path(root)).lease().add([digest])  # never released: the process just ends
    ready.set()
    done.wait(30)


def test_the_pins_of_a_process_that_is_gone_are_ignored(tmp_path: Path) -> None:
    models, cache = Models(), NodeCache(tmp_path, max_bytes=1)
    unbounded = NodeCache(tmp_path)
    models.gguf(unbounded, A)
    ready, done = FORK.Event(), FORK.Event()
    child = FORK.Process(target=_pin_and_wait, args=(str(tmp_path), sha(A), ready, done))
    child.start()
    try:
        assert ready.wait(30)
        assert cache.prune().held == 1000  # pinned by a live process
        assert blob_path(cache, A).exists()
    finally:
        done.set()
        child.join(30)
    assert child.exitcode == 0
    (pin,) = (tmp_path / PINS_DIR).iterdir()  # its pin file is still there: the lock is not
    report = cache.prune()
    assert (report.blobs, report.held) == (1, 0) and not pin.exists()
    # A pin file nobody holds (written by hand, its pid dead or alive) pins nothing either.
    models.gguf(unbounded, B)
    stray = tmp_path / PINS_DIR / f"{os.getpid()}-0123456789abcdef.pin"
    stray.write_text(json.dumps({"pid": os.getpid(), "digests": [sha(B)]}))
    assert cache.prune().blobs == 1 and not stray.exists()


def test_a_folder_goes_with_its_blobs_and_is_built_again(tmp_path: Path) -> None:
    models, cache = Models(), NodeCache(tmp_path, max_bytes=2500)
    files = {"config.json": data("{", 100), "sub/model.safetensors": data("w", 1400)}
    folder = models.folder(cache, files)
    weights = folder / "sub" / "model.safetensors"
    assert weights.samefile(blob_path(cache, files["sub/model.safetensors"]))
    assert held(cache) == 1500  # a hard link is counted once
    for path in (folder, *cache.blobs.blobs_dir.iterdir()):
        used(path, 300)
    models.gguf(cache, C)  # 2500 held: at the bound
    models.gguf(cache, A)  # over: the folder's blobs are the oldest
    assert not folder.exists()  # never left behind without its blobs
    assert not blob_path(cache, files["sub/model.safetensors"]).exists()
    fetched = len(models.gateway.fetches)
    again = models.folder(cache, files)
    assert again == folder and weights.read_bytes() == files["sub/model.safetensors"]
    assert weights.samefile(blob_path(cache, files["sub/model.safetensors"]))
    assert len(models.gateway.fetches) > fetched


def test_a_folder_of_copies_is_evicted_by_itself(tmp_path: Path) -> None:
    """Where links cannot be made the folder holds copies: evicting it alone frees bytes."""
    models, cache = Models(), NodeCache(tmp_path, max_bytes=10_000)
    files = {"config.json": data("{", 500)}
    folder = models.folder(cache, files)
    link = folder / "config.json"
    copy = folder / "copy"
    copy.write_bytes(link.read_bytes())
    link.unlink()
    copy.rename(link)
    assert held(cache) == 1000
    cache.max_bytes = 600
    used(folder, 100)
    used(blob_path(cache, files["config.json"]), 50)
    assert cache.prune().folders == 1 and not folder.exists()
    assert blob_path(cache, files["config.json"]).exists()
    assert models.folder(cache, files).joinpath("config.json").read_bytes() == files["config.json"]


def test_only_the_cache_s_own_names_are_counted_and_evicted(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(data("p", 5000))
    root = tmp_path / "cache"
    cache = NodeCache(root)
    fake_hex = "e" * 64
    (root / "blobs" / f"sha256-{fake_hex}").symlink_to(outside / "precious")
    (root / "blobs" / "notes.txt").write_bytes(data("n", 5000))
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / fake_hex).symlink_to(outside)
    (root / "jobs" / "job-1").mkdir(parents=True)
    (root / "jobs" / "job-1" / "checkpoint").write_bytes(data("j", 5000))
    cache.max_bytes = 1
    assert cache.prune().held == 0
    assert (outside / "precious").read_bytes() == data("p", 5000)
    assert (root / "blobs" / "notes.txt").exists() and (root / "models" / fake_hex).is_symlink()
    assert (root / "jobs" / "job-1" / "checkpoint").exists()


def test_unfinished_writes_left_by_a_dead_process_are_swept_at_start(tmp_path: Path) -> None:
    NodeCache(tmp_path)
    old, fresh = tmp_path / "blobs" / ".partial-old", tmp_path / "blobs" / ".partial-fresh"
    build = tmp_path / "models" / ".partial-build"
    build.mkdir(parents=True)
    (build / "config.json").write_bytes(b"{}")
    for path in (old, fresh):
        path.write_bytes(b"half")
    used(old, 7200)
    used(build, 7200)
    assert NodeCache(tmp_path).prune(sweep=True).swept == 0  # the first start swept them
    assert not old.exists() and not build.exists() and fresh.exists()


def _churn(root: str, seed: int, errors: Any) -> None:
    """Fetch, read and let go of folders at random on a small cache (one process of two)."""
    import random

    rng = random.Random(seed)
    models, cache = Models(), NodeCache(Path(root), max_bytes=5000)
    try:
        for _ in range(25):
            files = FOLDERS[rng.randrange(len(FOLDERS))]
            with cache.lease() as lease:
                folder = models.folder(cache, files, lease=lease)
                for name, blob in files.items():
                    assert folder.joinpath(name).read_bytes() == blob, name
                if rng.random() < 0.5:
                    cache.prune()
    except Exception as exc:  # reported to the test, which fails on it
        errors.put(f"{type(exc).__name__}: {exc}")


FOLDERS = [
    {"config.json": data(f"c{i}", 300), "model.safetensors": data(f"w{i}", 1700)} for i in range(5)
]


def test_two_processes_fetching_and_pruning_at_once_keep_the_cache_consistent(
    tmp_path: Path,
) -> None:
    errors = FORK.Queue()
    workers = [FORK.Process(target=_churn, args=(str(tmp_path), n, errors)) for n in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert errors.empty(), errors.get()
    cache = NodeCache(tmp_path, max_bytes=5000)
    assert held(cache) <= 5000
    with cache_lock(tmp_path):
        assert live_pins(tmp_path) == set()
    for folder in (tmp_path / "models").iterdir():
        assert not folder.name.startswith(".partial-")
        files = next(f for f in FOLDERS if sha(manifest_bytes(folder_files(f)))[7:] == folder.name)
        for name, blob in files.items():  # every folder left is whole, its blobs there
            assert folder.joinpath(name).read_bytes() == blob
            assert blob_path(cache, blob).read_bytes() == blob


# -- the cache's users ----------------------------------------------------------------------------


def version(fmt: str, digest: str, size: int) -> VersionInfo:
    fields: dict[str, Any] = dict.fromkeys(VersionInfo.__dataclass_fields__)
    fields.update(model="base", number=1, format=fmt, digest=digest, size_bytes=size)
    return VersionInfo(**fields)


def test_a_job_s_versions_stay_pinned_until_its_run_ends(tmp_path: Path) -> None:
    models = Models()
    models.add(A, B)
    cache = NodeCache(tmp_path, max_bytes=1)  # every prune takes all that is not pinned
    lookup: Callable[[str], tuple[str, int] | None] = {"file-b": (sha(B), len(B))}.get
    files = GatewayJobFiles(lookup, cache, SOURCE, client=models.client())
    try:
        first = files.begin_job("job-1")
        assert files.model_path(version("gguf", sha(A), len(A)), job_id="job-1").read_bytes() == A
        with files.open_input("file-b") as handle:  # pinned only while it is opened
            assert handle.read() == B
        assert cache.prune().held == 1000 and blob_path(cache, A).exists()
        # A later run of the job (the first lost its lease): the first's end leaves its pins.
        second = files.begin_job("job-1")
        files.model_path(version("gguf", sha(A), len(A)), job_id="job-1")
        files.end_job("job-1", first)
        assert cache.prune().held == 1000
        files.end_job("job-1", second)
        assert cache.prune().held == 0
        # A call that comes after its job's run ended (a thread left behind) pins nothing.
        with pytest.raises(LeaseReleased):
            files.model_path(version("gguf", sha(A), len(A)), job_id="job-1")
        with pytest.raises(LeaseReleased):
            first.add([sha(A)])
        assert not list((tmp_path / PINS_DIR).iterdir())
        files.model_path(version("gguf", sha(A), len(A)))  # no job: pinned until close
        assert cache.prune().held == 1000
    finally:
        files.close()
    assert cache.prune().held == 0


class FetchThenEnd:
    """A job handler that asks for its version, waits for its ``go``, then ends as planned."""

    kind = "quantize"

    def __init__(self, files: GatewayJobFiles) -> None:
        self.files = files
        self.plans: dict[str, tuple[bytes, asyncio.Event, str]] = {}

    async def run(self, ctx: JobContext) -> Outcome:
        blob, go, end = self.plans[ctx.job.id]
        wanted = version("gguf", sha(blob), len(blob))
        await ctx.call(self.files.model_path, wanted, job_id=ctx.job.id)
        await go.wait()
        if end == "fail":
            raise RuntimeError("the handler failed")
        return Outcome(COMPLETED, "done")


async def test_a_busy_runner_unpins_each_job_s_version_when_that_job_ends(
    tmp_path: Path,
) -> None:
    """Jobs overlap (a queue, max_concurrent > 1): the runner is never idle, yet each job's
    version goes with its run, however it ends."""
    models, D = Models(), data("d")
    models.add(A, B, C, D)
    cache = NodeCache(tmp_path, max_bytes=1)
    files = GatewayJobFiles(lambda _: None, cache, SOURCE, client=models.client())
    handler = FetchThenEnd(files)
    (wrapped,) = pins_per_job({handler.kind: handler}, files).values()
    runs: dict[str, asyncio.Task[Outcome]] = {}
    for job_id, blob, end in (("j1", A, "ok"), ("j2", B, "ok"), ("j3", C, "fail"), ("j4", D, "")):
        handler.plans[job_id] = (blob, asyncio.Event(), end)
        job = cast(JobInfo, SimpleNamespace(id=job_id))
        runs[job_id] = asyncio.create_task(wrapped.run(JobContext(job, "r1", cast(Any, None))))

    def pinned() -> set[str]:
        with cache_lock(tmp_path):
            return live_pins(tmp_path)

    try:
        for _ in range(500):
            if pinned() == {sha(A), sha(B), sha(C), sha(D)}:
                break
            await asyncio.sleep(0.01)
        assert pinned() == {sha(A), sha(B), sha(C), sha(D)}
        handler.plans["j2"][1].set()
        assert (await runs["j2"]).status == COMPLETED
        assert pinned() == {sha(A), sha(C), sha(D)}
        assert cache.prune().held == 3000 and not blob_path(cache, B).exists()
        handler.plans["j3"][1].set()
        with pytest.raises(RuntimeError, match="handler failed"):
            await runs["j3"]
        assert pinned() == {sha(A), sha(D)}
        runs["j4"].cancel()  # as the loop does when a job's lease is lost, or it stops
        with pytest.raises(asyncio.CancelledError):
            await runs["j4"]
        assert pinned() == {sha(A)}
        assert cache.prune().held == 1000 and blob_path(cache, A).read_bytes() == A
        handler.plans["j1"][1].set()
        await runs["j1"]
        assert pinned() == set() and cache.prune().held == 0
    finally:
        for run in runs.values():
            run.cancel()
        await asyncio.gather(*runs.values(), return_exceptions=True)
        files.close()


def test_a_replica_host_lets_its_pins_go_when_its_serve_call_ends(tmp_path: Path) -> None:
    spec = HostSpec(
        name="m",
        engine_json="{}",
        format="gguf",
        digest=sha(A),
        files=(FolderFile("model.gguf", sha(A), len(A)),),
        gateway_url="http://gw:8000",
        token=SECRET,
        cache_dir=str(tmp_path),
        cache_max_bytes=1,
    )
    host, cache = ReplicaHost(spec), NodeCache(tmp_path)
    Models().gguf(cache, A)
    host._lease = cache.lease()
    host._lease.add([sha(A)])
    assert NodeCache(tmp_path, spec.cache_max_bytes).prune().held == 1000
    with pytest.raises(RuntimeError, match="prepare"):
        host.serve(b"s" * 32)  # never prepared: its serve fails at once
    assert NodeCache(tmp_path, spec.cache_max_bytes).prune().held == 0
    assert host._lease is None  # a fetch after it pins in a new lease


def test_the_bound_is_a_cluster_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "lmaas.yaml"
    config.write_text("cluster:\n  node_cache_max_bytes: 1000\n")
    assert ClusterSettings().node_cache_max_bytes == 20 << 30
    assert load_settings(config).cluster.node_cache_max_bytes == 1000
    monkeypatch.setenv("LMAAS_CLUSTER__NODE_CACHE_MAX_BYTES", "0")  # 0: no bound
    assert load_settings(config).cluster.node_cache_max_bytes == 0
    with pytest.raises(ValidationError):
        ClusterSettings(node_cache_max_bytes=-1)
