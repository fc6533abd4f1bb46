"""A deployment: the desired replicas of one served name, made real through a ``Cluster``.

Requests go through the deployment's ``engine`` (a ``ReplicatedEngine``); this module only
decides which replicas exist. Replicas can be added and retired while requests flow: a retired
replica leaves the routing set at once and is stopped when its in-flight requests have finished
(or ``drain_timeout`` passed). A rolling update starts a full set of new replicas, switches
routing to them once all are ready, and drains the old set, so no request fails because of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from lmaas.config import Settings
from lmaas.controller.cluster.base import Cluster, ModelRef
from lmaas.engine.client import EngineHealth
from lmaas.engine.replica import Replica
from lmaas.engine.replicated import ReplicatedEngine

log = logging.getLogger(__name__)

_DRAIN_POLL = 0.05


class Deployment:
    """``replicas`` replicas of ``model`` behind one ``ReplicatedEngine``."""

    def __init__(
        self, model: ModelRef, replicas: int, *, cluster: Cluster, settings: Settings
    ) -> None:
        self.name = model.name
        self.model = model
        self.desired = replicas
        self.cluster = cluster
        self.settings = settings
        self.engine = ReplicatedEngine(model.name)
        self.last_error: str | None = None
        self.rolling = False
        self._next_index = 0
        self._started = False
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def version(self) -> int | None:
        return self.model.version

    @property
    def replicas(self) -> list[Replica]:
        """The routing set (draining replicas excluded)."""
        return self.engine.replicas

    def health(self) -> EngineHealth:
        return self.engine.health()

    def _new_replicas(self, model: ModelRef, count: int) -> list[Replica]:
        made = []
        for _ in range(count):
            made.append(self.cluster.new_replica(model, index=self._next_index))
            self._next_index += 1
        return made

    async def start(self) -> None:
        async with self._lock:
            self._started = True
            replicas = self._new_replicas(self.model, self.desired)
            self.engine.route_to(replicas)
            for replica in replicas:
                await replica.start()

    async def wait_ready(self, timeout: float) -> bool:
        replicas = list(self.replicas)
        results = await asyncio.gather(*(r.wait_ready(timeout) for r in replicas))
        return all(results)

    async def close(self) -> None:
        """Stop every replica now (in-flight requests fail); used at server shutdown."""
        for task in list(self._background):
            task.cancel()
        replicas = self.engine.replicas + self.engine.draining
        self.engine.route_to([])
        self.engine.draining.clear()
        await asyncio.gather(*(r.stop(now=True) for r in replicas))

    async def drain_and_close(self) -> None:
        """Stop taking requests, let the in-flight ones finish, then stop (undeploy)."""
        async with self._lock:
            self._retire_later(list(self.replicas))
        await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- changes while serving ----------------------------------------------------------------

    async def scale(self, replicas: int) -> None:
        """Add replicas (started at once) or retire the newest ones (drained in the background)."""
        async with self._lock:
            self.desired = replicas
            current = list(self.replicas)
            if replicas > len(current):
                added = self._new_replicas(self.model, replicas - len(current))
                self.engine.route_to(current + added)
                if self._started:
                    for replica in added:
                        await replica.start()
            elif replicas < len(current):
                self._retire_later(current[replicas:])

    async def roll(self, model: ModelRef) -> bool:
        """Replace every replica by one serving ``model``; True once traffic has moved.

        The new replicas must all become ready within ``worker_start_timeout``; otherwise they
        are stopped, the old ones keep serving and ``last_error`` says why.
        """
        async with self._lock:
            self.rolling = True
            try:
                old = list(self.replicas)
                fresh = self._new_replicas(model, len(old))
                for replica in fresh:
                    await replica.start()
                ready = await asyncio.gather(
                    *(r.wait_ready(self.settings.worker_start_timeout) for r in fresh)
                )
                if not all(ready):
                    errors = {r.last_error for r in fresh if r.last_error}
                    self.last_error = (
                        f"rolling update to {model.describe()} failed: "
                        f"{'; '.join(sorted(errors)) or 'replicas did not become ready'}"
                    )
                    log.error("%s: %s", self.name, self.last_error)
                    await asyncio.gather(*(r.stop(now=True) for r in fresh))
                    return False
                self.engine.route_to(fresh)
                self.model = model
                self.last_error = None
                log.info(
                    "%s: now serving %s; draining %d old replicas",
                    self.name,
                    model.describe(),
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

    def _retire_later(self, replicas: list[Replica]) -> None:
        self.engine.retire(replicas)
        deadline = time.monotonic() + self.settings.drain_timeout
        for replica in replicas:
            self._in_background(self._retire(replica, deadline), "retire")

    async def _retire(self, replica: Replica, deadline: float) -> None:
        """Wait for ``replica`` (already out of the routing set) to finish its requests, then
        stop it; at ``deadline`` it is stopped anyway."""
        try:
            # The in-flight count lives in the replica; a short poll until it reaches zero (or
            # the deadline) is the simplest correct wait.
            while replica.load().outstanding and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(_DRAIN_POLL)
            await replica.stop(now=replica.load().outstanding > 0)
        finally:
            self.engine.forget(replica)
