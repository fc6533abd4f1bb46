"""LocalDeployment routing, scaling and rolling updates, with fake replicas (no processes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lmaas.config import ModelConfig, Settings
from lmaas.controller.deployment import LocalDeployment
from lmaas.engine.directory import EngineDirectory
from lmaas.errors import ServiceUnavailableError
from lmaas.protocol.engine import GenerateRequest, TokenEvent


class FakeChannel:
    def __init__(self) -> None:
        self.outstanding = 0
        self.closed = False
        self.running = 0
        self.waiting = 0
        self.release = asyncio.Event()
        self.die_before_first = False

    async def generate(self, req: GenerateRequest) -> AsyncIterator[TokenEvent]:
        self.outstanding += 1
        try:
            if self.die_before_first:
                self.closed = True
                raise ServiceUnavailableError("worker died")
            await self.release.wait()
            yield TokenEvent(
                request_id=req.request_id, token_ids=[1], text="x", finish_reason="length"
            )
        finally:
            self.outstanding -= 1

    def abort(self, request_id: str) -> None:
        pass


class FakeReplica:
    """Stands in for WorkerProcess; ``loads`` decides whether it becomes ready."""

    loads = True
    made: list[FakeReplica] = []

    def __init__(self, model: ModelConfig, index: int, **kw: Any) -> None:
        self.model, self.index, self.version = model, index, kw.get("version")
        self.label = f"{model.name}#{index}"
        self.state = "stopped"
        self.channel: FakeChannel | None = None
        self.last_error: str | None = None
        self.stopped = False
        FakeReplica.made.append(self)

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.channel is not None and not self.channel.closed

    async def start(self) -> None:
        if FakeReplica.loads:
            self.channel = FakeChannel()
            self.state = "ready"
        else:
            self.state = "failed"
            self.last_error = "cannot load"

    async def wait_ready(self, timeout: float) -> bool:
        return self.ready

    async def stop(self) -> None:
        self.stopped = True
        self.state = "stopped"

    def health(self) -> Any:
        from lmaas.engine.client import ReplicaHealth

        out = self.channel.outstanding if self.channel else 0
        return ReplicaHealth(self.index, self.state, self.version, None, 0, self.last_error, out)


@pytest.fixture(autouse=True)
def _reset() -> None:
    FakeReplica.loads = True
    FakeReplica.made = []


def make(replicas: int = 2, version: int | None = 1) -> LocalDeployment:
    settings = Settings(drain_timeout=5)
    model = ModelConfig(name="m", path="/x.gguf", replicas=replicas)  # type: ignore[arg-type]
    return LocalDeployment(model, settings, version=version, replica_factory=FakeReplica)


def request(rid: str) -> GenerateRequest:
    return GenerateRequest(request_id=rid, prompt=[1, 2], max_tokens=1)


async def consume(d: LocalDeployment, rid: str) -> list[TokenEvent]:
    return [e async for e in d.generate(request(rid))]


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not predicate():  # noqa: ASYNC110 - a condition wait on fake state
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


async def test_routes_to_the_replica_with_fewest_outstanding() -> None:
    d = make(2)
    await d.start()
    first = asyncio.create_task(consume(d, "a"))
    await wait_for(lambda: d.outstanding == 1)
    second = asyncio.create_task(consume(d, "b"))
    await wait_for(lambda: d.outstanding == 2)
    busy = [r.channel.outstanding for r in d.replicas]  # type: ignore[union-attr]
    assert busy == [1, 1]
    for r in d.replicas:
        r.channel.release.set()  # type: ignore[union-attr]
    await asyncio.gather(first, second)
    await d.close()


async def test_roll_keeps_old_replicas_serving_until_new_ones_are_ready() -> None:
    d = make(2, version=1)
    await d.start()
    old = list(d.replicas)
    inflight = asyncio.create_task(consume(d, "old-request"))
    await wait_for(lambda: d.outstanding == 1)
    assert await d.roll(d.model.model_copy(update={"path": "/y.gguf"}), 2)
    assert d.version == 2 and all(r.version == 2 for r in d.replicas)
    assert not set(d.replicas) & set(old)
    # The old replica with a request in flight drains: not stopped until the request ends.
    busy = next(r for r in old if r.channel.outstanding)  # type: ignore[union-attr]
    assert not busy.stopped and "draining" in [r.state for r in d.health().replicas]
    busy.channel.release.set()  # type: ignore[union-attr]
    assert len(await inflight) == 1
    await wait_for(lambda: all(r.stopped for r in old))
    assert [r.state for r in d.health().replicas] == ["ready", "ready"]
    await d.close()


async def test_failed_roll_leaves_the_old_version_serving() -> None:
    d = make(2, version=1)
    await d.start()
    old = list(d.replicas)
    FakeReplica.loads = False
    assert not await d.roll(d.model, 2)
    assert d.replicas == old and d.version == 1
    assert d.last_error is not None and "cannot load" in d.last_error
    assert all(r.stopped for r in FakeReplica.made if r not in old)
    await d.close()


async def test_scale_up_and_down() -> None:
    d = make(1)
    await d.start()
    await d.scale(3)
    assert [r.ready for r in d.replicas] == [True, True, True]
    assert len({r.index for r in d.replicas}) == 3
    removed = d.replicas[1:]
    await d.scale(1)
    assert len(d.replicas) == 1
    await wait_for(lambda: all(r.stopped for r in removed))
    assert d.model.replicas == 1
    await d.close()


async def test_retries_once_on_another_replica_when_a_replica_dies_before_any_token() -> None:
    d = make(2)
    await d.start()
    dying, healthy = d.replicas
    dying.channel.die_before_first = True  # type: ignore[union-attr]
    healthy.channel.outstanding = 5  # makes the router pick the dying one first  # type: ignore[union-attr]
    healthy.channel.release.set()  # type: ignore[union-attr]
    events = await consume(d, "r")
    assert events[-1].finish_reason == "length"
    await d.close()


async def test_no_ready_replica_is_a_503() -> None:
    FakeReplica.loads = False
    d = make(1)
    await d.start()
    with pytest.raises(ServiceUnavailableError):
        await consume(d, "r")


def test_directory_resolves_other_spellings() -> None:
    d = make(1)
    names = {"chat:production": "chat"}
    directory = EngineDirectory({"chat": d}, resolver=names.get, version_of={"chat": 3}.get)
    assert directory.lookup("chat") is d
    assert directory.lookup("chat:production") is d
    assert directory.lookup("other") is None
    assert directory.version_of("chat") == 3 and directory.version_of("other") is None
