"""A deployment: the desired replicas of one served name, made real through a ``Cluster``.

Requests go through the deployment's ``engine`` (a ``ReplicatedEngine``); this module only
decides which replicas exist. Replicas can be added and retired while requests flow: a retired
replica leaves the routing set at once and is stopped when its in-flight requests have finished
(or ``drain_timeout`` passed). A rolling update starts a full set of new replicas, switches
routing to them once all are ready, and drains the old set, so no request fails because of it.

With a resource pool (``controller/pool.py``) each replica holds its ``Need`` in the pool from
the moment it is made until it has stopped; a replica the pool has no room for is a
``PendingReplica`` (never started), which ``place_pending`` turns into a real one once there is
room. Once a replica has loaded, ``on_loaded`` (the manager) returns what it measured, and the
replicas of that model need as much from then on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from lmaas.config import Settings
from lmaas.controller.cluster.base import Cluster, ModelRef
from lmaas.controller.pending import PendingReplica, is_pending
from lmaas.controller.pool import ModelFacts, Need, ResourcePool, replica_need
from lmaas.engine.client import EngineHealth
from lmaas.engine.replica import Replica
from lmaas.engine.replicated import ReplicatedEngine

log = logging.getLogger(__name__)

_DRAIN_POLL = 0.05

# Called once a new replica of ``model`` is ready; returns the model's facts as measured.
OnLoaded = Callable[["Deployment", Replica, ModelRef], Awaitable[ModelFacts | None]]


class Deployment:
    """``replicas`` replicas of ``model`` behind one ``ReplicatedEngine``, each holding its
    need in ``pool`` (no pool: room for everything)."""

    def __init__(
        self,
        model: ModelRef,
        replicas: int,
        *,
        cluster: Cluster,
        settings: Settings,
        pool: ResourcePool | None = None,
        on_loaded: OnLoaded | None = None,
        measured: dict[str, ModelFacts] | None = None,
    ) -> None:
        self.name = model.name
        self.model = model
        self.desired = replicas
        self.cluster = cluster
        self.settings = settings
        self.pool = pool
        self.on_loaded = on_loaded
        self.engine = ReplicatedEngine(model.name)
        self.last_error: str | None = None
        self.rolling = False
        self._next_index = 0
        self._started = False
        self._closed = False  # undeployed or shut down: scale() changes nothing any more
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        # What loaded replicas measured, by ModelRef.describe() (shared between deployments)
        self._measured = measured if measured is not None else {}

    @property
    def version(self) -> int | None:
        return self.model.version

    @property
    def replicas(self) -> list[Replica]:
        """The routing set (draining replicas excluded), pending replicas included."""
        return self.engine.replicas

    @property
    def placed(self) -> list[Replica]:
        return [r for r in self.replicas if not is_pending(r)]

    @property
    def pending(self) -> list[Replica]:
        return [r for r in self.replicas if is_pending(r)]

    def health(self) -> EngineHealth:
        return self.engine.health()

    @property
    def busy(self) -> bool:
        """Changing its replicas now (a scale, a rolling update, a placement, closing)."""
        return self.rolling or self._closed or self._lock.locked()

    # -- resources ---------------------------------------------------------------------------

    def need_of(self, model: ModelRef) -> Need:
        """What one replica of ``model`` takes from the pool (as measured once one loaded)."""
        facts = self._measured.get(model.describe()) or model.memory_facts()
        cores = self.pool.capacity.replica_cores if self.pool is not None else 1
        return replica_need(model.engine, facts, cores)

    @property
    def need(self) -> Need:
        return self.need_of(self.model)

    def fits(self, count: int, need: Need | None = None) -> str | None:
        """Why ``count`` more replicas (each needing ``need``, by default this deployment's)
        have no room in the pool now; None when they have."""
        if self.pool is None or count <= 0:
            return None
        fit = self.pool.fit([need or self.need] * count)
        return None if fit.ok else fit.reason

    def roll_fits(self, model: ModelRef) -> str | None:
        """Why a rolling update to ``model`` has no room now (None: it has). The new replicas
        take over the CPU of the old ones, as the traffic moves; the memory of both sets is
        held until the old one has stopped."""
        return self.fits(len(self.placed), self.need_of(model).without_cpu())

    def _place(self, model: ModelRef, need: Need) -> Replica:
        """A replica of ``model`` holding ``need`` in the pool, or a pending one saying why
        there is no room."""
        index, self._next_index = self._next_index, self._next_index + 1
        if self.pool is not None:
            fit = self.pool.fit([need])
            if not fit.ok:
                return PendingReplica(model, index, f"waiting for room: {fit.reason}")
        replica = self.cluster.new_replica(model, index=index)
        if self.pool is not None:
            self.pool.reserve(replica.id, need)
        return replica

    def _release(self, replica: Replica) -> None:
        if self.pool is not None:
            self.pool.release(replica.id)

    # -- start and stop ------------------------------------------------------------------------

    async def _start(self, replicas: list[Replica], model: ModelRef) -> None:
        for replica in replicas:
            if is_pending(replica):
                continue
            await replica.start()
            if self.on_loaded is not None:
                self._in_background(self._when_loaded(replica, model, self.on_loaded), "loaded")

    async def _when_loaded(self, replica: Replica, model: ModelRef, on_loaded: OnLoaded) -> None:
        if not await replica.wait_ready(self.settings.worker_start_timeout):
            return
        facts = await on_loaded(self, replica, model)
        if facts is None:
            return
        self._measured[model.describe()] = facts
        if self.pool is not None:
            self.pool.remeasure(replica.id, self.need_of(model))

    async def start(self) -> None:
        async with self._lock:
            self._started = True
            need = self.need
            replicas = [self._place(self.model, need) for _ in range(self.desired)]
            self.engine.route_to(replicas)
            await self._start(replicas, self.model)

    async def wait_ready(self, timeout: float) -> bool:
        replicas = list(self.replicas)
        results = await asyncio.gather(*(r.wait_ready(timeout) for r in replicas))
        return all(results)

    async def close(self) -> None:
        """Stop every replica now (in-flight requests fail); used at server shutdown."""
        self._closed = True
        for task in list(self._background):
            task.cancel()
        replicas = self.engine.replicas + self.engine.draining
        self.engine.route_to([])
        self.engine.draining.clear()
        await asyncio.gather(*(r.stop(now=True) for r in replicas))
        for replica in replicas:
            self._release(replica)

    async def drain_and_close(self) -> None:
        """Stop taking requests, let the in-flight ones finish, then stop (undeploy)."""
        self._closed = True
        async with self._lock:
            self._retire_later(list(self.replicas))
        await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- changes while serving ----------------------------------------------------------------

    async def scale(self, replicas: int) -> None:
        """Add replicas (started at once; pending when the pool has no room for them), or drop
        pending ones and then retire the newest (drained in the background)."""
        async with self._lock:
            if self._closed:
                return
            self.desired = replicas
            current = list(self.replicas)
            if replicas > len(current):
                need = self.need
                added = [self._place(self.model, need) for _ in range(replicas - len(current))]
                self.engine.route_to(current + added)
                if self._started:
                    await self._start(added, self.model)
            elif replicas < len(current):
                surplus = len(current) - replicas
                dropped = self.pending[::-1][:surplus]  # the newest pending ones first
                kept = [r for r in current if r not in dropped]
                self.engine.route_to(kept)
                self._retire_later(kept[replicas:])

    async def place_pending(self) -> int:
        """Turn pending replicas into real ones (same place in the set) while the pool has
        room; returns how many were placed. The others wait on, their reason brought up to
        date."""
        async with self._lock:
            current = list(self.replicas)
            placed: list[Replica] = []
            need = self.need
            for i, replica in enumerate(current):
                if not isinstance(replica, PendingReplica):
                    continue
                made = self._place(self.model, need)
                if is_pending(made):
                    replica.last_error = made.last_error
                    break  # the next ones need as much: no room for them either
                current[i] = made
                placed.append(made)
            if placed:
                self.engine.route_to(current)
                log.info("%s: %d pending replicas placed", self.name, len(placed))
                if self._started:
                    await self._start(placed, self.model)
            return len(placed)

    async def roll(self, model: ModelRef) -> bool:
        """Replace every replica by one serving ``model``; True once traffic has moved.

        The new replicas must all become ready within ``worker_start_timeout``; otherwise they
        are stopped, the old ones keep serving and ``last_error`` says why. Without room in
        the pool for the new replicas beside the old ones, none starts (``last_error`` says
        so). Pending replicas are replaced by pending ones of the new model.
        """
        async with self._lock:
            self.rolling = True
            try:
                short = self.roll_fits(model)
                if short is not None:
                    self.last_error = f"rolling update to {model.describe()} waits: {short}"
                    log.warning("%s: %s", self.name, self.last_error)
                    return False
                old = list(self.replicas)
                need = self.need_of(model)
                # Held without CPU until the traffic moves to them.
                fresh = [
                    self._pending_of(model, r)
                    if is_pending(r)
                    else self._place(model, need.without_cpu())
                    for r in old
                ]
                placed = [r for r in fresh if not is_pending(r)]
                await self._start(fresh, model)
                ready = await asyncio.gather(
                    *(r.wait_ready(self.settings.worker_start_timeout) for r in placed)
                )
                if not all(ready):
                    self._roll_failed(model, placed)
                    await asyncio.gather(*(r.stop(now=True) for r in placed))
                    for replica in placed:
                        self._release(replica)
                    return False
                if self.pool is not None:  # the CPU moves with the traffic
                    for replica in old:
                        self.pool.move_cpu(replica.id, 0)
                    for replica in placed:
                        self.pool.move_cpu(replica.id, need.cpu_threads)
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

    def _pending_of(self, model: ModelRef, replica: Replica) -> PendingReplica:
        index, self._next_index = self._next_index, self._next_index + 1
        return PendingReplica(model, index, replica.last_error or "waiting for room")

    def _roll_failed(self, model: ModelRef, fresh: list[Replica]) -> None:
        errors = {r.last_error for r in fresh if r.last_error}
        self.last_error = (
            f"rolling update to {model.describe()} failed: "
            f"{'; '.join(sorted(errors)) or 'replicas did not become ready'}"
        )
        log.error("%s: %s", self.name, self.last_error)

    def _in_background(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(coro, name=f"{what}-{self.name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _retire_later(self, replicas: list[Replica]) -> None:
        """Retire ``replicas``: pending ones leave at once, the others drain first."""
        pending = [r for r in replicas if is_pending(r)]
        if pending:
            self.engine.route_to([r for r in self.engine.replicas if r not in pending])
        placed = [r for r in replicas if not is_pending(r)]
        self.engine.retire(placed)
        deadline = time.monotonic() + self.settings.drain_timeout
        for replica in placed:
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
            self._release(replica)
