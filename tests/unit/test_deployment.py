"""Deployment: scaling, draining and rolling updates through a fake cluster (no processes);
the local cluster's model references and replica identity."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmaas.config import EngineConfig, Settings
from lmaas.controller.cluster.base import ModelFile, ModelRef
from lmaas.controller.cluster.local import LocalCluster
from lmaas.controller.deployment import Deployment
from lmaas.errors import InvalidRequestError
from lmaas.protocol.engine import GenerateRequest, TokenEvent
from lmaas.store.folder import FolderFile
from tests.fakes import FakeCluster, FakeReplica


def ref(version: int) -> ModelRef:
    return ModelRef("m", EngineConfig(), model="m", version=version, format="gguf", digest="d")


def make(replicas: int = 2, version: int = 1) -> tuple[Deployment, FakeCluster]:
    cluster = FakeCluster()
    settings = Settings(drain_timeout=30)
    return Deployment(ref(version), replicas, cluster=cluster, settings=settings), cluster


async def consume(d: Deployment, rid: str) -> list[TokenEvent]:
    request = GenerateRequest(request_id=rid, prompt=[1, 2], max_tokens=1)
    return [e async for e in d.engine.generate(request)]


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not predicate():  # noqa: ASYNC110 - a condition wait on fake state
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


def fake(replicas: list[object]) -> list[FakeReplica]:
    assert all(isinstance(r, FakeReplica) for r in replicas)
    return replicas  # type: ignore[return-value]


async def test_start_makes_the_desired_replicas_through_the_cluster() -> None:
    d, cluster = make(2)
    await d.start()
    assert d.replicas == cluster.made and [r.index for r in cluster.made] == [0, 1]
    assert await d.wait_ready(1) and d.engine.capacity == 8
    await d.close()
    assert all(r.stopped_now for r in cluster.made)


async def test_scale_down_retires_the_newest_and_drains_them() -> None:
    d, _ = make(1)
    await d.start()
    await d.scale(3)
    assert [r.index for r in fake(d.replicas)] == [0, 1, 2] and all(r.ready for r in d.replicas)
    oldest, middle, newest = fake(d.replicas)
    for r in (oldest, middle):
        r._inflight.add("x")  # the router sends the next request to the newest one
    inflight = asyncio.create_task(consume(d, "in-flight"))
    await wait_for(lambda: newest.load().outstanding == 1)
    for r in (oldest, middle):
        r._inflight.clear()

    await d.scale(1)
    assert d.replicas == [oldest] and d.desired == 1
    await wait_for(lambda: middle.stopped_now is not None)
    # The newest one still runs a request: it drains (out of routing) and is not stopped yet.
    assert newest.stopped_now is None
    assert [h.state for h in d.health().replicas] == ["ready", "draining"]
    oldest.release.set()
    await consume(d, "after")  # goes to the only routed replica
    assert newest.seen == ["in-flight"] and oldest.seen == ["after"]

    newest.release.set()
    assert len(await inflight) == 1
    await wait_for(lambda: newest.stopped_now is not None)
    assert newest.stopped_now is False  # drained, so stopped gracefully
    assert [h.id for h in d.health().replicas] == [oldest.id]
    await d.close()


async def test_roll_switches_to_the_new_version_and_drains_the_old() -> None:
    d, _ = make(2, version=1)
    await d.start()
    old = fake(list(d.replicas))
    inflight = asyncio.create_task(consume(d, "old-request"))
    await wait_for(lambda: d.engine.outstanding == 1)
    assert await d.roll(ref(2))
    assert d.version == 2 and all(r.version == 2 for r in fake(d.replicas))
    assert not set(d.replicas) & set(old)
    busy = next(r for r in old if r.load().outstanding)
    assert busy.stopped_now is None and "draining" in [r.state for r in d.health().replicas]
    busy.release.set()
    assert len(await inflight) == 1
    await wait_for(lambda: all(r.stopped_now is not None for r in old))
    assert [r.state for r in d.health().replicas] == ["ready", "ready"]
    await d.close()


async def test_a_roll_that_fails_keeps_the_old_replicas() -> None:
    d, cluster = make(2, version=1)
    await d.start()
    old = list(d.replicas)
    cluster.loads = False
    assert not await d.roll(ref(2))
    assert d.replicas == old and d.version == 1 and all(r.ready for r in old)
    assert d.last_error is not None and "cannot load" in d.last_error
    fresh = [r for r in cluster.made if r not in old]
    assert len(fresh) == 2 and all(r.stopped_now for r in fresh)
    assert not d.rolling
    await d.close()


async def test_drain_and_close_lets_requests_finish() -> None:
    d, _ = make(1)
    await d.start()
    (only,) = fake(d.replicas)
    inflight = asyncio.create_task(consume(d, "r"))
    await wait_for(lambda: only.load().outstanding == 1)
    closing = asyncio.create_task(d.drain_and_close())
    await wait_for(lambda: d.replicas == [])
    assert only.stopped_now is None
    only.release.set()
    await asyncio.gather(inflight, closing)
    assert only.stopped_now is False and d.health().replicas == []


class _Blobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, digest: str) -> Path:
        return self.root / digest.removeprefix("sha256:")


class _Folders:
    def __init__(self) -> None:
        self.built: list[tuple[str, list[FolderFile]]] = []

    def ensure(self, digest: str, files: list[FolderFile]) -> Path:
        self.built.append((digest, files))
        return Path("/folders") / digest


def test_the_local_cluster_resolves_references_to_the_store_s_files(tmp_path: Path) -> None:
    store = SimpleNamespace(blobs=_Blobs(tmp_path), folders=_Folders())
    cluster = LocalCluster(Settings(), store)  # type: ignore[arg-type]
    (tmp_path / "aa").write_bytes(b"GGUF")
    gguf = dataclasses.replace(ref(1), digest="sha256:aa")
    assert cluster.locate(gguf) == tmp_path / "aa"
    with pytest.raises(RuntimeError, match="missing"):
        cluster.locate(dataclasses.replace(gguf, digest="sha256:bb"))
    folder = dataclasses.replace(
        gguf, format="hf", digest="sha256:cc", files=(ModelFile("config.json", "sha256:dd", 2),)
    )
    assert cluster.locate(folder) == Path("/folders/sha256:cc")
    assert store.folders.built == [("sha256:cc", [FolderFile("config.json", "sha256:dd", 2)])]
    outside = ModelRef("m", EngineConfig(), path="/models/x.gguf")
    assert cluster.locate(outside) == Path("/models/x.gguf")

    replica = cluster.new_replica(gguf, index=4)
    health = replica.health()
    assert (health.index, health.node, health.state) == (4, socket.gethostname(), "stopped")
    assert health.id == replica.id and replica.id != cluster.new_replica(gguf, index=4).id
    assert not replica.ready and replica.capacity == 0


def test_a_local_cluster_without_a_store_refuses_store_models() -> None:
    cluster = LocalCluster(Settings(), None)
    with pytest.raises(InvalidRequestError, match="store"):
        cluster.check(ref(1))
    cluster.check(ModelRef("m", EngineConfig(), path="/models/x.gguf"))
