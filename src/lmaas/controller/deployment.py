"""A deployment: one served name backed by N local worker replicas behind one EngineClient.

Replicas can be added and retired while requests flow: a retired replica leaves the routing set
at once and is stopped when its in-flight requests have finished (or ``drain_timeout`` passed).
A rolling update starts a full set of new replicas, switches routing to them once all are ready,
and drains the old set, so no request fails because of the update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from lmaas.config import ModelConfig, Settings
from lmaas.controller.cluster.local import WorkerProcess
from lmaas.engine.client import EngineClient, EngineHealth, ReplicaHealth
from lmaas.errors import ServiceUnavailableError
from lmaas.protocol.engine import GenerateRequest, ModelInfo, TokenEvent
from lmaas.protocol.tasks import TaskRequest, TaskResult

log = logging.getLogger(__name__)

_DRAIN_POLL = 0.05


class LocalDeployment(EngineClient):
    """Routes each request to the ready replica with the fewest outstanding requests."""

    def __init__(
        self,
        model: ModelConfig,
        settings: Settings,
        *,
        version: int | None = None,
        replica_factory: Callable[..., WorkerProcess] = WorkerProcess,
    ) -> None:
        self.name = model.name
        self._factory = replica_factory
        self.model = model
        self.version = version
        self.settings = settings
        self.last_error: str | None = None
        self.rolling = False
        self._info: ModelInfo | None = None
        self._next_index = 0
        self.replicas: list[WorkerProcess] = [
            self._new_replica(model, version) for _ in range(model.replicas)
        ]
        self._draining: list[WorkerProcess] = []
        self._owner: dict[str, WorkerProcess] = {}
        self._started = False
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    def _new_replica(self, model: ModelConfig, version: int | None) -> WorkerProcess:
        index = self._next_index
        self._next_index += 1
        return self._factory(
            model,
            index,
            start_timeout=self.settings.worker_start_timeout,
            health_interval=self.settings.health_interval,
            backoff_max=self.settings.restart_backoff_max,
            on_ready=self._remember_info,
            version=version,
        )

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
        self._started = True
        for replica in self.replicas:
            await replica.start()

    async def wait_ready(self, timeout: float) -> bool:
        replicas = list(self.replicas)
        results = await asyncio.gather(*(r.wait_ready(timeout) for r in replicas))
        return all(results)

    async def close(self) -> None:
        """Stop every replica now (in-flight requests fail); used at server shutdown."""
        for task in list(self._background):
            task.cancel()
        replicas = self.replicas + self._draining
        self.replicas, self._draining = [], []
        await asyncio.gather(*(r.stop() for r in replicas))

    async def drain_and_close(self) -> None:
        """Stop taking requests, let the in-flight ones finish, then stop (undeploy)."""
        async with self._lock:
            retired, self.replicas = self.replicas, []
            self._retire_later(retired)
        await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- changes while serving ----------------------------------------------------------------

    async def scale(self, replicas: int) -> None:
        """Add replicas (started at once) or retire the newest ones (drained in the background)."""
        async with self._lock:
            self.model = self.model.model_copy(update={"replicas": replicas})
            current = len(self.replicas)
            if replicas > current:
                added = [
                    self._new_replica(self.model, self.version) for _ in range(replicas - current)
                ]
                self.replicas = self.replicas + added
                if self._started:
                    for replica in added:
                        await replica.start()
            elif replicas < current:
                retired = self.replicas[replicas:]
                self.replicas = self.replicas[:replicas]
                self._retire_later(retired)

    async def roll(self, model: ModelConfig, version: int | None) -> bool:
        """Replace every replica by one serving ``model``; True once traffic has moved.

        The new replicas must all become ready within ``worker_start_timeout``; otherwise they
        are stopped, the old ones keep serving and ``last_error`` says why.
        """
        async with self._lock:
            self.rolling = True
            try:
                count = len(self.replicas)
                fresh = [self._new_replica(model, version) for _ in range(count)]
                for replica in fresh:
                    await replica.start()
                ready = await asyncio.gather(
                    *(r.wait_ready(self.settings.worker_start_timeout) for r in fresh)
                )
                if not all(ready):
                    errors = {r.last_error for r in fresh if r.last_error}
                    self.last_error = (
                        f"rolling update to version {version} failed: "
                        f"{'; '.join(sorted(errors)) or 'replicas did not become ready'}"
                    )
                    log.error("%s: %s", self.name, self.last_error)
                    await asyncio.gather(*(r.stop() for r in fresh))
                    return False
                old, self.replicas = self.replicas, fresh
                self.model = model.model_copy(update={"replicas": count})
                self.version = version
                self.last_error = None
                log.info(
                    "%s: now serving version %s; draining %d old replicas",
                    self.name,
                    version,
                    len(old),
                )
                self._retire_later(old)
                return True
            finally:
                self.rolling = False

    def _in_background(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(coro, name=f"{what}-{self.name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _retire_later(self, replicas: list[WorkerProcess]) -> None:
        self._draining.extend(replicas)
        self._in_background(self._retire(replicas), "retire")

    async def _retire(self, replicas: list[WorkerProcess]) -> None:
        """Wait for ``replicas`` (already out of the routing set and in ``_draining``) to
        finish their requests, then stop them."""
        deadline = time.monotonic() + self.settings.drain_timeout
        try:
            # The replicas' in-flight counts live in their channels; a short poll until they
            # reach zero (or the deadline) is the simplest correct wait across several of them.
            while time.monotonic() < deadline and any(  # noqa: ASYNC110
                r.channel is not None and not r.channel.closed and r.channel.outstanding
                for r in replicas
            ):
                await asyncio.sleep(_DRAIN_POLL)
            await asyncio.gather(*(r.stop() for r in replicas))
        finally:
            for r in replicas:
                with contextlib.suppress(ValueError):
                    self._draining.remove(r)

    # -- requests -------------------------------------------------------------------------------

    def _pick(self, exclude: WorkerProcess | None = None) -> WorkerProcess:
        ready = [r for r in self.replicas if r.ready and r is not exclude]
        if not ready:
            raise ServiceUnavailableError(
                f"model '{self.name}' has no ready replica (starting or restarting); retry shortly"
            )
        return min(ready, key=lambda r: r.channel.outstanding if r.channel else 0)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        replica = self._pick()
        retried = False
        while True:
            channel = replica.channel
            assert channel is not None
            self._owner[request.request_id] = replica
            produced = False
            try:
                async for event in channel.generate(request):
                    produced = True
                    yield event
                return
            except ServiceUnavailableError:
                # The replica died before this request produced anything: nothing was sent to
                # the client yet, so it is safe to run it once more on another replica.
                if produced or retried or not channel.closed:
                    raise
                retried = True
                log.warning(
                    "%s: replica died; retrying %s elsewhere", replica.label, request.request_id
                )
                replica = self._pick(exclude=replica)
            finally:
                self._owner.pop(request.request_id, None)

    async def run_task(self, request: TaskRequest) -> TaskResult:
        """Run a task on the least-busy ready replica; once more elsewhere if that one dies
        before answering (a task has no partial output, so a retry is always safe)."""
        replica = self._pick()
        for attempt in range(2):
            channel = replica.channel
            assert channel is not None
            self._owner[request.request_id] = replica
            try:
                return await channel.run_task(request)
            except ServiceUnavailableError:
                if attempt or not channel.closed:
                    raise
                replica = self._pick(exclude=replica)
            finally:
                self._owner.pop(request.request_id, None)
        raise AssertionError("unreachable")

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
        replicas: list[ReplicaHealth] = [r.health() for r in self.replicas]
        for r in self._draining:
            h = r.health()
            h.state = "draining"
            replicas.append(h)
        return EngineHealth(
            ready=any(r.ready for r in self.replicas),
            running=running,
            waiting=waiting,
            replicas=replicas,
        )
