"""The autoscaler's control loop over the deployment manager, a fake cluster and its router:
requests held by fake replicas are the load; the policy's decisions scale the deployment through
its own path (the resource pool leaves what does not fit pending), each one an event with its
reason and a metric; a request to a deployment at zero replicas is held until one is ready (or
its hold times out), and its arrival brings the replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from lmaas.config import AutoscalingConfig, ModelConfig, Settings
from lmaas.config_autoscaling import AutoscalerSettings
from lmaas.controller.manager import DeploymentManager
from lmaas.controller.pool import Capacity, GiB
from lmaas.errors import InvalidRequestError, ServiceUnavailableError
from lmaas.protocol.deploy import DeploymentCreate, DeploymentPatch
from lmaas.protocol.engine import GenerateRequest
from tests.fakes import FakeCluster, FakeReplica
from tests.unit.test_deployment_manager import MODEL, FakeSpecs, FakeStore, wait_for


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Served:
    manager: DeploymentManager
    cluster: FakeCluster
    clock: Clock
    registry: CollectorRegistry

    async def tick(self, seconds: float = 1.0) -> None:
        await self.manager.autoscaler.tick()
        self.clock.now += seconds

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    # The loop itself ticks only when woken (a held request); the tests tick by hand.
    settings = Settings(
        models=[ModelConfig(name=MODEL)],
        drain_timeout=5,
        autoscaler=AutoscalerSettings(interval_s=60, cold_start_timeout_s=5),
    )
    cluster = FakeCluster()
    manager = DeploymentManager(settings, FakeStore(), FakeSpecs(), cluster=cluster)  # type: ignore[arg-type]
    clock = Clock()
    manager.autoscaler.clock = clock
    registry = CollectorRegistry()
    for collector in manager.collectors():
        registry.register(collector)
    await manager.start()
    yield Served(manager, cluster, clock, registry)
    await manager.close()


def auto(**fields: object) -> AutoscalingConfig:
    base: dict[str, object] = {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 2,
        "downscale_delay_s": 3,
        "look_back_period_s": 0.5,
    }
    return AutoscalingConfig.model_validate(base | fields)


def request(n: int) -> GenerateRequest:
    return GenerateRequest(request_id=f"r{n}", prompt=[1, 2], max_tokens=1)


async def consume(served: Served, name: str, n: int) -> list[str]:
    engine = served.manager.engines[name]
    return [e.text async for e in engine.generate(request(n))]


def replicas_of(served: Served, name: str) -> list[FakeReplica]:
    return [r for r in served.cluster.made if r.model.name == name]


async def test_a_step_load_scales_up_after_the_delay_and_down_when_idle(served: Served) -> None:
    await served.manager.create(DeploymentCreate(model=MODEL, name="auto", autoscaling=auto()))
    assert len(replicas_of(served, "auto")) == 1
    engine = served.manager.engines["auto"]
    load = [asyncio.create_task(consume(served, "auto", i)) for i in range(3)]
    await wait_for(lambda: engine.outstanding == 3)

    await served.tick()  # 3 ongoing on 1 replica (target 1): wants 3, for 2 s first
    await served.tick()
    out = served.manager.get("auto")
    assert out.replicas == 1 and out.autoscaling is not None
    assert out.autoscaling.reason.startswith("wants 3 for 1.0 of 2 s (upscale_delay_s)")
    await served.tick()
    out = served.manager.get("auto")
    assert out.replicas == 3 and len(replicas_of(served, "auto")) == 3
    assert out.autoscaling is not None and out.autoscaling.desired_replicas == 3
    (event,) = out.autoscaling.events
    assert (event.direction, event.from_replicas, event.to_replicas) == ("up", 1, 3)
    assert (event.ongoing_requests, event.queued_requests) == (3, 0)
    assert "3.00 ongoing requests on average" in event.reason
    assert "(upscale_delay_s 2 s)" in event.reason
    assert served.metric("lmaas_autoscaler_decisions_total", model="auto", direction="up") == 1
    assert served.metric("lmaas_autoscaler_desired_replicas", model="auto") == 3

    for replica in replicas_of(served, "auto"):
        replica.release.set()
    assert await asyncio.gather(*load) == [["x"]] * 3  # no request failed
    for _ in range(3):  # idle: fewer wanted, for 3 s first
        await served.tick()
    assert served.manager.get("auto").replicas == 3
    await served.tick()
    out = served.manager.get("auto")
    assert out.replicas == 1  # min_replicas
    assert out.autoscaling is not None
    assert [e.direction for e in out.autoscaling.events] == ["up", "down"]
    assert "(downscale_delay_s 3 s)" in out.autoscaling.events[-1].reason
    assert served.metric("lmaas_autoscaler_decisions_total", model="auto", direction="down") == 1
    # The two newest replicas drain and stop; the first one serves on.
    first, *rest = replicas_of(served, "auto")
    await wait_for(lambda: all(r.stopped_now is not None for r in rest))
    assert first.ready and first.stopped_now is None


async def test_scale_to_zero_holds_a_request_until_its_replica_is_ready(served: Served) -> None:
    config = auto(min_replicas=0, downscale_delay_s=0, look_back_period_s=0.5)
    await served.manager.create(DeploymentCreate(model=MODEL, name="cold", autoscaling=config))
    await served.tick()
    assert served.manager.get("cold").replicas == 0 and not replicas_of(served, "cold")
    assert served.manager.get("cold").state == "stopped"

    # A request arrives: it is held, and its arrival wakes the loop, which adds a replica.
    answer = asyncio.create_task(consume(served, "cold", 1))
    await wait_for(lambda: len(replicas_of(served, "cold")) == 1)
    (replica,) = replicas_of(served, "cold")
    await wait_for(lambda: replica.seen == ["r1"])
    replica.release.set()
    assert await answer == ["x"]
    out = served.manager.get("cold")
    assert out.autoscaling is not None
    (event,) = out.autoscaling.events
    assert event.direction == "up" and "1 requests arrived at zero replicas (1 held)" in (
        event.reason
    )
    # Idle again: back to zero (the look-back period must see no request first).
    served.clock.now += 1
    await served.tick()
    await served.tick()
    assert served.manager.get("cold").replicas == 0
    await wait_for(lambda: replica.stopped_now is not None)


async def test_a_held_request_fails_when_no_replica_becomes_ready_in_time(
    served: Served,
) -> None:
    served.manager.autoscaler.settings.cold_start_timeout_s = 0.05
    config = auto(min_replicas=0)
    await served.manager.create(DeploymentCreate(model=MODEL, name="broken", autoscaling=config))
    served.cluster.loads = False  # its replicas fail to load
    with pytest.raises(ServiceUnavailableError, match="no ready replica"):
        await consume(served, "broken", 1)
    assert len(replicas_of(served, "broken")) == 1  # the request did bring one


async def test_a_scale_beyond_the_pool_leaves_replicas_pending_and_asks_no_more() -> None:
    # Room for two replicas (each holds both cores), one taken by the config deployment.
    cluster = FakeCluster()
    cluster.offers = Capacity("test-node", cores=2, memory_total=16 * GiB, cpu_overcommit=2)
    settings = Settings(
        models=[ModelConfig(name=MODEL)],
        drain_timeout=5,
        autoscaler=AutoscalerSettings(interval_s=60),
    )
    manager = DeploymentManager(settings, FakeStore(), FakeSpecs(), cluster=cluster)  # type: ignore[arg-type]
    served = Served(manager, cluster, Clock(), CollectorRegistry())
    manager.autoscaler.clock = served.clock
    await manager.start()
    try:
        config = auto(max_replicas=4, upscale_delay_s=0)
        await manager.create(DeploymentCreate(model=MODEL, name="auto", autoscaling=config))
        load = [asyncio.create_task(consume(served, "auto", i)) for i in range(2)]
        await wait_for(lambda: manager.engines["auto"].outstanding == 2)
        await served.tick()
        out = manager.get("auto")
        assert out.replicas == 2
        assert [r.state for r in out.replica_status] == ["ready", "pending"]
        assert out.autoscaling is not None
        assert "no room for all of them yet (left pending): needs" in (
            out.autoscaling.events[-1].reason
        )
        load += [asyncio.create_task(consume(served, "auto", i)) for i in range(2, 4)]
        await wait_for(lambda: manager.engines["auto"].outstanding == 4)
        await served.tick()  # 4 ongoing want 4 replicas, but more would only wait too
        out = manager.get("auto")
        assert out.replicas == 2 and out.autoscaling is not None
        assert out.autoscaling.reason.startswith("1 replicas wait for room in the resource pool")
        assert len(out.autoscaling.events) == 1 and len(replicas_of(served, "auto")) == 1
        for replica in replicas_of(served, "auto"):
            replica.release.set()
        assert await asyncio.gather(*load) == [["x"]] * 4
    finally:
        await manager.close()


async def test_replicas_by_hand_and_autoscaling_exclude_each_other(served: Served) -> None:
    with pytest.raises(InvalidRequestError, match="either replicas or autoscaling") as refused:
        await served.manager.create(
            DeploymentCreate(model=MODEL, name="both", replicas=2, autoscaling=auto())
        )
    assert refused.value.param == "replicas"
    await served.manager.create(DeploymentCreate(model=MODEL, name="auto", autoscaling=auto()))
    with pytest.raises(InvalidRequestError, match="is autoscaled"):
        await served.manager.update("auto", DeploymentPatch(replicas=2))

    # New bounds apply at the next tick; the spec keeps the config for the next start.
    await served.manager.update("auto", DeploymentPatch(autoscaling=auto(min_replicas=2)))
    await served.tick()
    assert served.manager.get("auto").replicas == 2
    spec = served.manager.specs.specs["auto"]  # type: ignore[attr-defined]
    assert spec.autoscaling_json is not None and '"min_replicas":2' in spec.autoscaling_json
    # Off: the replicas there are stay, and replicas can be set by hand again.
    await served.manager.update("auto", DeploymentPatch.model_validate({"autoscaling": None}))
    out = served.manager.get("auto")
    assert out.autoscaling is None and out.replicas == 2
    assert served.manager.specs.specs["auto"].autoscaling_json is None  # type: ignore[attr-defined]
    await served.manager.update("auto", DeploymentPatch(replicas=1))
    assert served.manager.get("auto").replicas == 1


async def test_an_undeployed_deployment_is_no_longer_scaled(served: Served) -> None:
    await served.manager.create(DeploymentCreate(model=MODEL, name="auto", autoscaling=auto()))
    await served.manager.delete("auto")
    await served.tick()
    assert not served.manager.autoscaler.tracks("auto")
    assert served.metric("lmaas_autoscaler_desired_replicas", model="auto") is None


async def test_config_deployments_autoscale_from_their_initial_replicas() -> None:
    config = auto(min_replicas=0, initial_replicas=2)
    settings = Settings(models=[ModelConfig(name=MODEL, autoscaling=config)], drain_timeout=5)
    cluster = FakeCluster()
    manager = DeploymentManager(settings, FakeStore(), FakeSpecs(), cluster=cluster)  # type: ignore[arg-type]
    await manager.start()
    try:
        out = manager.get(MODEL)
        assert out.replicas == 2 and out.autoscaling is not None
        assert out.autoscaling.config.min_replicas == 0
        assert manager.engines[MODEL].hold_timeout == settings.autoscaler.cold_start_timeout_s  # type: ignore[attr-defined]
    finally:
        await manager.close()
