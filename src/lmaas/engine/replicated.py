"""One served name over N replicas: the ``EngineClient`` the gateway routes requests to.

It routes each request to the ready replica with the fewest outstanding requests and retries a
request once on another replica when its replica died before it produced anything. Which
replicas exist is decided elsewhere (``lmaas.controller``): the controller changes the routing
set with ``route_to`` and ``retire``, and stops retired replicas once they have drained.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

from lmaas.engine.client import EngineClient, EngineHealth, ReplicaHealth
from lmaas.engine.replica import Replica
from lmaas.errors import ServiceUnavailableError
from lmaas.protocol.engine import GenerateRequest, ModelInfo, TokenEvent
from lmaas.protocol.tasks import TaskRequest, TaskResult

log = logging.getLogger(__name__)


class ReplicatedEngine(EngineClient):
    """Routes over ``replicas`` (the routing set); ``draining`` replicas take no new requests
    but still finish theirs and show in ``health()`` as draining."""

    def __init__(self, name: str, replicas: Iterable[Replica] = ()) -> None:
        self.name = name
        self.replicas: list[Replica] = list(replicas)
        self.draining: list[Replica] = []
        self._owner: dict[str, Replica] = {}
        self._info: ModelInfo | None = None

    # -- the routing set (changed by the controller) ---------------------------------------------

    def route_to(self, replicas: Iterable[Replica]) -> None:
        """Make ``replicas`` the routing set (replicas left out are not retired: see ``retire``)."""
        self.replicas = list(replicas)

    def retire(self, replicas: Iterable[Replica]) -> None:
        """Take ``replicas`` out of the routing set at once; they drain until ``forget``."""
        retired = list(replicas)
        self.replicas = [r for r in self.replicas if r not in retired]
        self.draining.extend(r for r in retired if r not in self.draining)

    def forget(self, replica: Replica) -> None:
        """Drop a stopped replica from the draining list."""
        with contextlib.suppress(ValueError):
            self.draining.remove(replica)

    # -- EngineClient ---------------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo | None:
        for r in self.replicas:
            info = r.info
            if info is not None:
                self._info = info
                return info
        return self._info

    @property
    def capacity(self) -> int:
        return sum(r.capacity for r in self.replicas if r.ready)

    @property
    def outstanding(self) -> int:
        return len(self._owner)

    @property
    def sequence_rate(self) -> float | None:
        known = [x for r in self.replicas if r.ready and (x := r.load().sequence_rate)]
        return sum(known) / len(known) if known else None

    def _pick(self, exclude: Replica | None = None) -> Replica:
        ready = [r for r in self.replicas if r.ready and r is not exclude]
        if not ready:
            raise ServiceUnavailableError(
                f"model '{self.name}' has no ready replica (starting or restarting); retry shortly"
            )
        return min(ready, key=lambda r: r.load().outstanding)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        replica = self._pick()
        retried = False
        while True:
            self._owner[request.request_id] = replica
            produced = False
            events = replica.generate(request)
            try:
                async for event in events:
                    produced = True
                    yield event
                return
            except ServiceUnavailableError:
                # The replica died before this request produced anything: nothing was sent to
                # the client yet, so it is safe to run it once more on another replica.
                if produced or retried or replica.ready:
                    raise
                retried = True
                log.warning(
                    "%s: replica died; retrying %s elsewhere", replica.label, request.request_id
                )
                replica = self._pick(exclude=replica)
            finally:
                self._owner.pop(request.request_id, None)
                # Closing the replica's stream now (not when it is collected) aborts the
                # request there at once when our caller stopped early.
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    await aclose()

    async def run_task(self, request: TaskRequest) -> TaskResult:
        """Run a task on the least-busy ready replica; once more elsewhere if that one dies
        before answering (a task has no partial output, so a retry is always safe)."""
        replica = self._pick()
        for attempt in range(2):
            self._owner[request.request_id] = replica
            try:
                return await replica.run_task(request)
            except ServiceUnavailableError:
                if attempt or replica.ready:
                    raise
                replica = self._pick(exclude=replica)
            finally:
                self._owner.pop(request.request_id, None)
        raise AssertionError("unreachable")

    async def abort(self, request_id: str) -> None:
        replica = self._owner.get(request_id)
        if replica is not None:
            await replica.abort(request_id)

    def health(self) -> EngineHealth:
        running = waiting = 0
        for r in self.replicas:
            if r.ready:
                load = r.load()
                running += load.running
                waiting += load.waiting
        replicas: list[ReplicaHealth] = [r.health() for r in self.replicas]
        for r in self.draining:
            h = r.health()
            h.state = "draining"
            replicas.append(h)
        return EngineHealth(
            ready=any(r.ready for r in self.replicas),
            running=running,
            waiting=waiting,
            replicas=replicas,
        )
