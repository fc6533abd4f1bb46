"""ReplicatedEngine: routing over fake replicas (no processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from lmaas.config import EngineConfig
from lmaas.controller.cluster.base import ModelRef
from lmaas.engine.directory import EngineDirectory
from lmaas.engine.replicated import Demand, ReplicatedEngine
from lmaas.errors import ServiceUnavailableError
from lmaas.protocol.engine import GenerateRequest, TokenEvent
from lmaas.protocol.tasks import TaskRequest
from tests.fakes import FakeReplica


def replicas(count: int, version: int = 1) -> list[FakeReplica]:
    ref = ModelRef("m", EngineConfig(), model="m", version=version)
    made = [FakeReplica(ref, i) for i in range(count)]
    for r in made:
        r.state = "ready"
    return made


def request(rid: str) -> GenerateRequest:
    return GenerateRequest(request_id=rid, prompt=[1, 2], max_tokens=1)


async def consume(engine: ReplicatedEngine, rid: str) -> list[TokenEvent]:
    return [e async for e in engine.generate(request(rid))]


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not predicate():  # noqa: ASYNC110 - a condition wait on fake state
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


async def test_routes_to_the_replica_with_fewest_outstanding() -> None:
    a, b, c = replicas(3)
    engine = ReplicatedEngine("m", [a, b, c])
    tasks = [asyncio.create_task(consume(engine, f"r{i}")) for i in range(3)]
    await wait_for(lambda: engine.outstanding == 3)
    assert [r.load().outstanding for r in (a, b, c)] == [1, 1, 1]
    b.release.set()  # b finishes its request: it is now the least busy
    await wait_for(lambda: engine.outstanding == 2)
    b.release.clear()
    late = asyncio.create_task(consume(engine, "late"))
    await wait_for(lambda: engine.outstanding == 3)
    assert [r.load().outstanding for r in (a, b, c)] == [1, 1, 1]
    assert engine.health().running == 3
    assert b.seen == ["r1", "late"]
    for r in (a, b, c):
        r.release.set()
    events = await asyncio.gather(*tasks, late)
    assert all(e[-1].finish_reason == "length" for e in events)


async def test_retries_once_elsewhere_when_a_replica_dies_before_any_token() -> None:
    dying, healthy = replicas(2)
    engine = ReplicatedEngine("m", [dying, healthy])
    dying.die_before_first = True
    healthy._inflight.add("x")  # the router picks `dying` first
    healthy.release.set()
    events = await consume(engine, "r")
    assert events[-1].finish_reason == "length"
    assert dying.seen == ["r"] and healthy.seen == ["r"]
    assert not dying.ready


async def test_no_retry_when_the_replica_is_still_up() -> None:
    """A 503 from a replica that is still ready is its answer, not its death: no retry."""
    flaky, other = replicas(2)
    engine = ReplicatedEngine("m", [flaky, other])
    other.release.set()

    async def refuse(req: GenerateRequest):  # type: ignore[no-untyped-def]
        raise ServiceUnavailableError("busy")
        yield  # pragma: no cover - makes this an async generator

    flaky.generate = refuse  # type: ignore[method-assign]
    other._inflight.add("x")  # the router picks `flaky` first
    with pytest.raises(ServiceUnavailableError, match="busy"):
        await consume(engine, "r")


async def test_no_ready_replica_is_a_503() -> None:
    (only,) = replicas(1)
    only.state = "failed"
    engine = ReplicatedEngine("m", [only])
    with pytest.raises(ServiceUnavailableError, match="no ready replica"):
        await consume(engine, "r")
    assert engine.capacity == 0 and not engine.health().ready


async def test_run_task_retries_on_another_replica_when_its_replica_died() -> None:
    dying, healthy = replicas(2)
    engine = ReplicatedEngine("m", [dying, healthy])
    dying.die_before_first = True
    healthy._inflight.add("x")  # the router picks `dying` first
    result = await engine.run_task(TaskRequest(request_id="t", kind="tokenize", texts=["a"]))
    assert result.request_id == "t"
    assert dying.seen == ["t"] and healthy.seen == ["t"]


async def test_abort_goes_to_the_replica_running_the_request() -> None:
    a, b = replicas(2)
    engine = ReplicatedEngine("m", [a, b])
    stream = engine.generate(request("r"))
    pending = asyncio.ensure_future(anext(stream))
    await wait_for(lambda: engine.outstanding == 1)
    owner, idle = (a, b) if a.load().outstanding else (b, a)
    await engine.abort("r")
    assert owner.aborted == ["r"] and idle.aborted == []
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await stream.aclose()
    assert owner.load().outstanding == 0 and engine.outstanding == 0


async def test_retired_replicas_take_no_requests_and_show_as_draining() -> None:
    old, new = replicas(2)
    engine = ReplicatedEngine("m", [old])
    engine.route_to([old, new])
    engine.retire([old])
    new.release.set()
    await consume(engine, "r")
    assert old.load().outstanding == 0
    assert [(h.id, h.state) for h in engine.health().replicas] == [
        (new.id, "ready"),
        (old.id, "draining"),
    ]
    engine.forget(old)
    assert [h.id for h in engine.health().replicas] == [new.id]


def test_directory_resolves_other_spellings() -> None:
    engine = ReplicatedEngine("chat", replicas(1))
    names = {"chat:production": "chat"}
    directory = EngineDirectory({"chat": engine}, resolver=names.get, version_of={"chat": 3}.get)
    assert directory.lookup("chat") is engine
    assert directory.lookup("chat:production") is engine
    assert directory.lookup("other") is None
    assert directory.version_of("chat") == 3 and directory.version_of("other") is None


async def test_closing_the_stream_early_closes_the_replica_stream_at_once() -> None:
    (only,) = replicas(1)
    engine = ReplicatedEngine("m", [only])
    only.release.set()
    stream = engine.generate(request("r"))
    first = await anext(stream)  # the replica's stream is suspended after its event
    assert first.finish_reason == "length" and only.load().outstanding == 1
    await stream.aclose()
    assert only.load().outstanding == 0 and engine.outstanding == 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_demand_counts_ongoing_queued_and_the_longest_wait_for_a_first_event() -> None:
    (a,) = replicas(1)
    clock = Clock()
    engine = ReplicatedEngine("m", [a], clock=clock)
    assert engine.demand() == Demand(ongoing=0, queued=0, oldest_wait_s=0.0, held=0)
    first = asyncio.create_task(consume(engine, "r0"))
    await wait_for(lambda: engine.outstanding == 1)
    clock.now += 2.5
    second = asyncio.create_task(consume(engine, "r1"))
    await wait_for(lambda: engine.outstanding == 2)
    clock.now += 0.5
    # Both run (the fake replica reports them running): the first has waited 3 s for a token.
    assert engine.demand() == Demand(ongoing=2, queued=0, oldest_wait_s=3.0, held=0)
    a.release.set()
    await asyncio.gather(first, second)
    assert engine.demand() == Demand(ongoing=0, queued=0, oldest_wait_s=0.0, held=0)


async def test_a_request_without_a_ready_replica_fails_at_once_unless_held() -> None:
    engine = ReplicatedEngine("m", [])
    with pytest.raises(ServiceUnavailableError, match="no ready replica"):
        await consume(engine, "r0")


async def test_a_held_request_waits_for_a_replica_and_tells_who_brings_one() -> None:
    engine = ReplicatedEngine("m", [])
    engine.hold_timeout = 5.0
    asked: list[int] = []
    engine.on_demand = lambda: asked.append(engine.demand().held)
    answer = asyncio.create_task(consume(engine, "r0"))
    await wait_for(lambda: asked == [1])
    assert engine.demand().ongoing == 1 and engine.demand().queued == 1
    (a,) = replicas(1)
    a.state = "starting"
    engine.route_to([a])  # a replica is placed: not ready yet
    await asyncio.sleep(0)
    assert not answer.done() and a.seen == []
    a.state = "ready"
    a.release.set()
    events = await answer
    assert [e.text for e in events] == ["x"] and a.seen == ["r0"]
    assert engine.demand().held == 0


async def test_a_held_request_gives_up_after_the_hold_timeout() -> None:
    engine = ReplicatedEngine("m", [])
    engine.hold_timeout = 0.05
    with pytest.raises(ServiceUnavailableError, match="no ready replica"):
        await consume(engine, "r0")
    assert engine.demand().held == 0
