"""A deployment: one model name served by N local worker replicas behind one EngineClient."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from lmaas.config import ModelConfig, Settings
from lmaas.controller.cluster.local import WorkerProcess
from lmaas.engine.client import EngineClient, EngineHealth
from lmaas.errors import ServiceUnavailableError
from lmaas.protocol.engine import GenerateRequest, ModelInfo, TokenEvent


class LocalDeployment(EngineClient):
    """Routes each request to the ready replica with the fewest outstanding requests."""

    def __init__(self, model: ModelConfig, settings: Settings) -> None:
        self.name = model.name
        self.model = model
        self._info: ModelInfo | None = None
        self.replicas = [
            WorkerProcess(
                model,
                i,
                start_timeout=settings.worker_start_timeout,
                health_interval=settings.health_interval,
                backoff_max=settings.restart_backoff_max,
                on_ready=self._remember_info,
            )
            for i in range(model.replicas)
        ]
        self._owner: dict[str, WorkerProcess] = {}

    def _remember_info(self, info: ModelInfo) -> None:
        self._info = info

    @property
    def info(self) -> ModelInfo | None:
        return self._info

    @property
    def capacity(self) -> int:
        return sum(r.model.engine.max_num_seqs for r in self.replicas if r.ready)

    @property
    def outstanding(self) -> int:
        return len(self._owner)

    async def start(self) -> None:
        for replica in self.replicas:
            await replica.start()

    async def wait_ready(self, timeout: float) -> bool:
        results = await asyncio.gather(*(r.wait_ready(timeout) for r in self.replicas))
        return all(results)

    async def close(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.replicas))

    def _pick(self) -> WorkerProcess:
        ready = [r for r in self.replicas if r.ready]
        if not ready:
            raise ServiceUnavailableError(
                f"model '{self.name}' has no ready replica (starting or restarting); retry shortly"
            )
        return min(ready, key=lambda r: r.channel.outstanding if r.channel else 0)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        replica = self._pick()
        channel = replica.channel
        assert channel is not None
        self._owner[request.request_id] = replica
        try:
            async for event in channel.generate(request):
                yield event
        finally:
            self._owner.pop(request.request_id, None)

    async def abort(self, request_id: str) -> None:
        replica = self._owner.get(request_id)
        if replica is not None and replica.channel is not None:
            replica.channel.abort(request_id)

    def health(self) -> EngineHealth:
        running = waiting = 0
        for r in self.replicas:
            if r.ready and r.channel is not None:
                running += r.channel.running
                waiting += r.channel.waiting
        return EngineHealth(
            ready=any(r.ready for r in self.replicas),
            running=running,
            waiting=waiting,
            replicas=[r.health() for r in self.replicas],
        )
