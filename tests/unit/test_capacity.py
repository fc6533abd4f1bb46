"""The resource pool follows its cluster's capacity: replicas waiting as pending are placed when
a node joins, the pool shrinks when one leaves (placed replicas stay), an API request is
checked against the capacity of now, and a cluster that does not answer keeps the last
reading. The Ray kind's capacity is read from a fake ``ray`` module whose nodes change."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lmaas.config import ModelConfig, Settings
from lmaas.controller.capacity import ClusterPool
from lmaas.controller.manager import DeploymentManager
from lmaas.controller.pool import Capacity, GiB, Need, ResourcePool
from lmaas.protocol.deploy import DeploymentCreate
from tests.fakes import FakeCluster
from tests.unit.test_deployment_manager import MODEL, FakeSpecs, FakeStore, wait_for

# Nodes of 2 cores: a replica with engine.threads 0 takes a node's 2 cores, not the cluster's.
ONE_NODE = Capacity("ray (1 node)", cores=2, memory_total=16 * GiB, node_cores=2)
TWO_NODES = Capacity("ray (2 nodes)", cores=4, memory_total=32 * GiB, node_cores=2)


def test_a_pool_that_grows_tells_its_listeners_and_one_that_shrinks_keeps_its_replicas() -> None:
    pool = ResourcePool(ONE_NODE)
    heard: list[int] = []
    pool.listen(lambda: heard.append(pool.capacity.cores))
    need = Need(cpu_threads=2, memory=GiB)
    assert pool.reserve("a", need).ok and not pool.fit([need]).ok
    pool.resize(TWO_NODES)
    assert heard == [4] and pool.fit([need]).ok
    assert pool.reserve("b", need).ok
    pool.resize(ONE_NODE)  # a node left: both stay placed, nothing more fits
    assert heard == [4] and pool.usage().replicas == 2
    fit = pool.fit([need])
    assert not fit.ok and fit.cpu_threads_short == 4
    assert "ray (1 node) offers 2 CPU threads" in str(fit.reason)


def manager(refresh: float) -> tuple[DeploymentManager, FakeCluster]:
    cluster = FakeCluster()
    cluster.offers = ONE_NODE
    settings = Settings(
        models=[ModelConfig(name=MODEL, replicas=2)],
        drain_timeout=5,
        cluster={"capacity_refresh_s": refresh},  # type: ignore[arg-type]
    )
    made = DeploymentManager(settings, FakeStore(), FakeSpecs(), cluster=cluster)  # type: ignore[arg-type]
    return made, cluster


async def test_a_pending_replica_is_placed_when_a_node_joins_and_the_pool_follows_a_leave() -> None:
    manager_, cluster = manager(refresh=0.02)
    await manager_.start()
    out = manager_.get(MODEL)  # threads 0: a replica holds both cores of one node
    assert [r.state for r in out.replica_status] == ["ready", "pending"]
    assert len(cluster.made) == 1

    cluster.offers = TWO_NODES  # a node joined
    await wait_for(lambda: manager_.get(MODEL).ready_replicas == 2)
    assert len(cluster.made) == 2
    pool = manager_.pool_usage()
    assert pool is not None and (pool.node, pool.cores, pool.replicas) == ("ray (2 nodes)", 4, 2)

    cluster.offers = ONE_NODE  # it left again: the pool says so, the replicas stay
    await wait_for(lambda: manager_.pool_usage().cores == 2)  # type: ignore[union-attr]
    assert manager_.get(MODEL).ready_replicas == 2 and len(cluster.made) == 2
    await manager_.close()


async def test_an_api_request_is_checked_against_the_capacity_of_now() -> None:
    manager_, cluster = manager(refresh=0)  # read once at start, and when a request needs it
    await manager_.start()
    cluster.offers = Capacity("ray (3 nodes)", cores=6, memory_total=48 * GiB, node_cores=2)
    # The pending replica waits for the next reading (none on a timer)...
    assert [r.state for r in manager_.get(MODEL).replica_status] == ["ready", "pending"]
    # ...which a request the last reading had no room for makes: it fits, and so does the
    # pending replica, placed once the pool grew.
    out = await manager_.create(DeploymentCreate(model=MODEL, name="more"))
    assert out.replicas == 1 and manager_.pool_usage().cores == 6  # type: ignore[union-attr]
    await wait_for(lambda: manager_.get(MODEL).ready_replicas == 2)
    assert len(cluster.made) == 3
    await manager_.close()


async def test_a_cluster_that_does_not_answer_keeps_the_last_reading(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers: list[Any] = [ONE_NODE]

    def capacity() -> Capacity:
        answer = answers[-1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    cluster = SimpleNamespace(capacity=capacity)
    pools = ClusterPool(lambda: cluster, 0, lambda: None)  # type: ignore[arg-type,return-value]
    assert pools.pool is not None and pools.pool.capacity == ONE_NODE
    answers.append(ConnectionError("GCS unreachable"))
    await pools.refresh()
    assert pools.pool.capacity == ONE_NODE
    assert "cannot read the cluster's capacity: GCS unreachable" in caplog.text
    answers.append(TWO_NODES)
    await asyncio.gather(pools.refresh(), pools.refresh())  # one read at a time
    assert pools.pool.capacity == TWO_NODES
    assert ClusterPool(lambda: SimpleNamespace(), 1, lambda: None).pool is None  # type: ignore[arg-type,return-value]


def test_the_ray_kind_s_capacity_counts_the_nodes_alive_now(tmp_path: Path) -> None:
    from tests.unit.test_ray_cluster import NODES, ray_cluster

    cluster, api = ray_cluster(tmp_path)
    assert (cluster.capacity().node, cluster.capacity().cores) == ("ray (2 nodes)", 6)
    api._nodes = [*NODES, {"Alive": True, "Resources": {"CPU": 8.0, "memory": 16.0 * GiB}}]
    joined = cluster.capacity()
    assert (joined.node, joined.cores, joined.memory) == ("ray (3 nodes)", 14, 28 * GiB)
    assert joined.replica_cores == 8  # engine.threads 0: the largest node's CPUs
    api._nodes = NODES[1:]
    left = cluster.capacity()
    assert (left.node, left.cores, left.memory) == ("ray (1 node)", 2, 4 * GiB)
    assert left.replica_cores == 2
