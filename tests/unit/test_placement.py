"""Deployments placed against a resource pool, through a fake cluster that offers a capacity:
API requests beyond it are refused with what is missing, config deployments beyond it wait as
pending replicas (never started) and are placed when replicas elsewhere stop, a rolling update
holds the memory of both sets, and what a loaded replica measured is kept with its version."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lmaas.config import EngineConfig, ModelConfig, Settings
from lmaas.controller.cluster.base import ModelRef
from lmaas.controller.deployment import Deployment
from lmaas.controller.manager import DeploymentManager
from lmaas.controller.pool import Capacity, GiB, MiB, ModelFacts, ResourcePool
from lmaas.errors import ConflictError
from lmaas.protocol.deploy import DeploymentCreate, DeploymentPatch
from lmaas.protocol.engine import ModelInfo
from tests.fakes import FakeCluster, FakeReplica, fake_info
from tests.unit.test_deployment_manager import MODEL, FakeCatalog, FakeSpecs, FakeStore, wait_for

# 2 cores x 2: room for two replicas with engine.threads 0 (each holds both cores).
TWO_SLOTS = Capacity("test-node", cores=2, memory_total=16 * GiB, cpu_overcommit=2)
FACTS = ModelFacts("llamacpp", 100 * MiB, "sha256:m", memory_bytes=50 * MiB, kv_bytes_per_token=1)


def ref(version: int = 1, facts: ModelFacts = FACTS) -> ModelRef:
    return ModelRef(
        "m", EngineConfig(), model="m", version=version, format="gguf", digest="d", facts=facts
    )


def deployment(replicas: int, pool: ResourcePool) -> tuple[Deployment, FakeCluster]:
    cluster = FakeCluster()
    settings = Settings(drain_timeout=5)
    return Deployment(ref(), replicas, cluster=cluster, settings=settings, pool=pool), cluster


async def test_replicas_beyond_the_pool_wait_as_pending_and_are_never_started() -> None:
    pool = ResourcePool(TWO_SLOTS)
    d, cluster = deployment(3, pool)
    await d.start()
    assert [h.state for h in d.health().replicas] == ["ready", "ready", "pending"]
    assert len(cluster.made) == 2 and pool.usage().replicas == 2
    (pending,) = d.pending
    assert pending.last_error is not None
    assert pending.last_error.startswith("waiting for room: needs 2 more CPU threads")
    assert d.engine.capacity == 8  # only the two real replicas take requests

    await d.scale(2)  # the pending one goes first, without draining
    assert [h.state for h in d.health().replicas] == ["ready", "ready"]
    assert all(r.stopped_now is None for r in cluster.made)
    await d.close()
    assert pool.usage().replicas == 0


async def test_a_pending_replica_is_placed_once_a_replica_elsewhere_stops() -> None:
    pool = ResourcePool(TWO_SLOTS)
    first, _ = deployment(2, pool)
    second, cluster = deployment(1, pool)
    pool.listen(lambda: asyncio.get_running_loop().create_task(second.place_pending()))
    await first.start()
    await second.start()
    assert [h.state for h in second.health().replicas] == ["pending"] and not cluster.made
    await first.scale(1)  # the retired replica drains, stops and frees its room
    await wait_for(lambda: second.health().ready)
    assert [r.index for r in cluster.made] == [1] and cluster.made[0].ready
    assert pool.usage().replicas == 2
    await first.close()
    await second.close()


async def test_a_rolling_update_holds_both_sets_memory_but_moves_the_cpu() -> None:
    # CPU for exactly two replicas of 8 threads; 500 MiB of memory.
    pool = ResourcePool(Capacity("n", cores=8, memory_total=500 * MiB, cpu_overcommit=2))
    d, cluster = deployment(2, pool)
    await d.start()  # 2 x (50 MiB + 8192 KV bytes) + the 100 MiB file once
    assert pool.usage().cpu_threads == 16 and pool.usage().memory == 200 * MiB + 2 * 8192
    heavy = ref(2, ModelFacts("llamacpp", 100 * MiB, "sha256:n", 150 * MiB, 1))
    assert not await d.roll(heavy)  # 2 x 150 MiB + another 100 MiB file does not fit
    assert d.version == 1 and len(cluster.made) == 2
    assert d.last_error is not None and "more memory" in d.last_error
    assert not await d.roll(heavy)

    light = ref(2, ModelFacts("llamacpp", 100 * MiB, "sha256:n", 60 * MiB, 1))
    old = list(d.replicas)
    assert await d.roll(light)  # the CPU of 2 x 8 threads moved: 16 held, not 32
    assert d.version == 2 and pool.usage().cpu_threads == 16
    await wait_for(
        lambda: all(isinstance(r, FakeReplica) and r.stopped_now is not None for r in old)
    )
    assert pool.usage().replicas == 2 and pool.usage().cpu_threads == 16
    await d.close()


def served(capacity: Capacity, *models: ModelConfig) -> tuple[DeploymentManager, FakeCluster]:
    store = FakeStore()
    cluster = FakeCluster()
    cluster.offers = capacity
    settings = Settings(models=list(models) or [ModelConfig(name=MODEL)], drain_timeout=5)
    manager = DeploymentManager(settings, store, FakeSpecs(), cluster=cluster)  # type: ignore[arg-type]
    return manager, cluster


async def test_an_api_request_beyond_the_pool_is_refused_with_what_is_missing() -> None:
    manager, cluster = served(TWO_SLOTS)
    await manager.start()
    with pytest.raises(ConflictError) as refused:
        await manager.create(DeploymentCreate(model=MODEL, name="big", replicas=2))
    error = refused.value
    assert (error.status_code, error.code, error.param) == (
        409,
        "insufficient_resources",
        "replicas",
    )
    assert error.message.startswith("cannot start 2 replicas of 'big': needs 2 more CPU threads")
    assert "test-node offers 4 CPU threads (2 cores x 2)" in error.message
    assert [d.name for d in manager.list()] == [MODEL] and len(cluster.made) == 1

    await manager.create(DeploymentCreate(model=MODEL, name="one"))
    with pytest.raises(
        ConflictError, match=r"cannot scale 'one' to 3 replicas \(2 more to start\)"
    ):
        await manager.update("one", DeploymentPatch(replicas=3))
    assert manager.get("one").replicas == 1 and len(cluster.made) == 2
    pool = manager.pool_usage()
    assert pool is not None and (pool.cpu_threads, pool.cpu_threads_used) == (4, 4)
    out = manager.get("one")
    assert out.resources is not None and out.resources.cpu_threads == 2
    assert not out.resources.measured  # no replica measured anything yet

    await manager.delete("one")  # drained and stopped: its room is free again
    await wait_for(lambda: manager.pool_usage().replicas == 1)  # type: ignore[union-attr]
    await manager.update(MODEL, DeploymentPatch(replicas=2))
    assert manager.get(MODEL).ready_replicas == 2
    await manager.close()


async def test_config_deployments_beyond_the_pool_wait_and_follow_freed_room() -> None:
    manager, cluster = served(
        TWO_SLOTS,
        ModelConfig(name="alpha", model=MODEL, replicas=2),
        ModelConfig(name="beta", model=MODEL),
    )
    await manager.start()  # specs start by name: alpha takes the room
    beta = manager.get("beta")
    assert (beta.state, beta.ready_replicas, beta.replica_status[0].state) == (
        "pending",
        0,
        "pending",
    )
    assert beta.last_error is not None and "needs 2 more CPU threads" in beta.last_error
    assert len(cluster.made) == 2
    await manager.update("alpha", DeploymentPatch(replicas=1))
    await wait_for(lambda: manager.get("beta").state == "ready")
    assert manager.get("beta").last_error is None and len(cluster.made) == 3
    await manager.close()


class _Measured(FakeCluster):
    """Replicas whose worker reports what it measured once loaded."""

    def new_replica(self, model: Any, *, index: int) -> FakeReplica:
        replica = _MeasuredReplica(model, index, loads=self.loads)
        self.made.append(replica)
        return replica


class _MeasuredReplica(FakeReplica):
    @property
    def info(self) -> ModelInfo | None:
        info = fake_info(self.model.name)
        return info.model_copy(update={"memory_bytes": 70 * MiB, "kv_bytes_per_token": 1000})


class _RecordingCatalog(FakeCatalog):
    def __init__(self) -> None:
        super().__init__()
        self.kept: list[tuple[str, int, int, int | None]] = []

    def set_memory(
        self, model: str, number: int, *, memory_bytes: int, kv_bytes_per_token: int | None
    ) -> None:
        self.kept.append((model, number, memory_bytes, kv_bytes_per_token))


async def test_what_a_loaded_replica_measured_is_kept_with_its_version() -> None:
    store = FakeStore()
    store.catalog = _RecordingCatalog()
    cluster = _Measured()
    cluster.offers = TWO_SLOTS
    settings = Settings(models=[ModelConfig(name=MODEL)], drain_timeout=5)
    manager = DeploymentManager(settings, store, FakeSpecs(), cluster=cluster)  # type: ignore[arg-type]
    await manager.start()
    await wait_for(lambda: bool(store.catalog.kept))
    assert store.catalog.kept == [(MODEL, 3, 70 * MiB, 1000)]
    out = manager.get(MODEL)
    assert out.resources is not None and out.resources.measured
    assert out.resources.memory_bytes == 70 * MiB + 1000 * 8192
    pool = manager.pool_usage()
    assert pool is not None and pool.memory_bytes_used == 70 * MiB + 1000 * 8192 + 10
    # Another deployment of the same version needs what was measured, not the estimate.
    other = await manager.create(DeploymentCreate(model=f"{MODEL}:3", name="other"))
    assert other.resources is not None and other.resources.measured
    await manager.close()


async def test_a_followed_alias_that_moved_waits_for_room_to_roll() -> None:
    # The fake versions were never measured: each replica is estimated at 1.25 GiB (a
    # runtime of 256 MiB and 128 KiB of KV cache for each of 8192 cells); room for three.
    capacity = Capacity("test-node", cores=8, memory_total=4 * GiB, cpu_overcommit=4)
    manager, cluster = served(capacity, ModelConfig(name="prod", model=f"{MODEL}:production"))
    await manager.start()
    await manager.create(DeploymentCreate(model=f"{MODEL}:1", name="pinned", replicas=2))
    catalog = manager.store.catalog
    assert isinstance(catalog, FakeCatalog)
    catalog.aliases["production"] = 3
    await manager.on_aliases_changed(MODEL)
    await wait_for(lambda: manager.get("prod").last_error is not None)
    waiting = manager.get("prod")
    assert waiting.version == 2 and waiting.last_error is not None
    assert "moved to version 3; the rolling update waits: needs 1.0 GiB more memory" in (
        waiting.last_error
    )
    assert len(cluster.made) == 3  # nothing was started for the roll

    await manager.update("pinned", DeploymentPatch(replicas=0))  # room for the new replica
    await wait_for(lambda: manager.version_of("prod") == 3)
    assert manager.get("prod").last_error is None
    await manager.close()
