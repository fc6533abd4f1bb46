"""One served name over N replicas: the ``EngineClient`` the gateway routes requests to.

It routes each request to the ready replica with the fewest outstanding requests and retries a
request once on another replica when its replica died before it produced anything. Which
replicas exist is decided elsewhere (``lmaas.controller``): the controller changes the routing
set with ``route_to`` and ``retire``, and stops retired replicas once they have drained.

For the autoscaler it measures its load (``demand``: ongoing and queued requests, the longest
wait for a first token) and, when the controller sets ``hold_timeout`` (a deployment that may
scale to zero), holds requests that find no ready replica until one is (``until_ready``),
calling ``on_demand`` so that their arrival brings one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from lmaas.engine.client import EngineClient, EngineHealth, ReplicaHealth
from lmaas.engine.replica import Replica
from lmaas.errors import ServiceUnavailableError
from lmaas.protocol.engine import GenerateRequest, ModelInfo, TokenEvent
from lmaas.protocol.tasks import TaskRequest, TaskResult

log = logging.getLogger(__name__)

_HOLD_POLL = 0.1  # s; how often a held request looks again at replicas that are not starting


@dataclass(frozen=True, slots=True)
class Demand:
    """The load on one served name at one moment, as its router sees it."""

    ongoing: int  # requests sent to its replicas and not finished, plus the held ones
    queued: int  # of those, the ones waiting for a slot in a replica, or held
    oldest_wait_s: float  # the longest an ongoing request has waited for its first event
    held: int  # requests waiting for a ready replica (``until_ready``)


class ReplicatedEngine(EngineClient):
    """Routes over ``replicas`` (the routing set); ``draining`` replicas take no new requests
    but still finish theirs and show in ``health()`` as draining."""

    def __init__(
        self,
        name: str,
        replicas: Iterable[Replica] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.replicas: list[Replica] = list(replicas)
        self.draining: list[Replica] = []
        self._owner: dict[str, Replica] = {}
        self._info: ModelInfo | None = None
        self._clock = clock
        # Set by the controller: requests finding no ready replica wait this long for one
        # (None: they fail at once), and ``on_demand`` is called when one starts waiting.
        self.hold_timeout: float | None = None
        self.on_demand: Callable[[], None] | None = None
        self._held: dict[int, float] = {}  # id of a waiting call -> when it began
        self._first_pending: dict[str, float] = {}  # request id -> sent, until its first event
        self._routing_changed = asyncio.Event()

    # -- the routing set (changed by the controller) ---------------------------------------------

    def route_to(self, replicas: Iterable[Replica]) -> None:
        """Make ``replicas`` the routing set (replicas left out are not retired: see ``retire``)."""
        self.replicas = list(replicas)
        self._routing_changed.set()
        self._routing_changed = asyncio.Event()

    def retire(self, replicas: Iterable[Replica]) -> None:
        """Take ``replicas`` out of the routing set at once; they drain until ``forget``."""
        retired = list(replicas)
        self.route_to([r for r in self.replicas if r not in retired])
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

    # -- load, and holding requests while a replica starts -----------------------------------

    def demand(self) -> Demand:
        """The current load, without I/O."""
        now = self._clock()
        running = waiting = 0
        for r in self.replicas + self.draining:
            load = r.load()
            running += load.running
            waiting += load.waiting
        held = len(self._held)
        sent = len(self._owner)
        starts = list(self._first_pending.values()) + list(self._held.values())
        return Demand(
            ongoing=sent + held,
            queued=max(waiting, sent - running, 0) + held,
            oldest_wait_s=max((now - t for t in starts), default=0.0),
            held=held,
        )

    async def until_ready(self) -> None:
        """With ``hold_timeout`` set and no ready replica, wait for one (at most that long;
        telling ``on_demand`` first); otherwise return at once."""
        timeout = self.hold_timeout
        if timeout is None or any(r.ready for r in self.replicas):
            return
        token = object()
        self._held[id(token)] = self._clock()
        try:
            if self.on_demand is not None:
                self.on_demand()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready_replica(), timeout)
        finally:
            del self._held[id(token)]

    async def _ready_replica(self) -> None:
        """Return once a replica of the routing set is ready (it may change meanwhile)."""
        while not any(r.ready for r in self.replicas):
            changed = asyncio.ensure_future(self._routing_changed.wait())
            waits = [
                asyncio.ensure_future(r.wait_ready(3600.0)) for r in self.replicas if not r.ready
            ]
            try:
                await asyncio.wait([changed, *waits], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in [changed, *waits]:
                    task.cancel()
            # A replica that is not starting (failed, pending, not started yet) answers at
            # once: look again when the routing set changes, or shortly.
            if not changed.done() and not any(r.ready for r in self.replicas):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._routing_changed.wait(), _HOLD_POLL)

    def _pick(self, exclude: Replica | None = None) -> Replica:
        ready = [r for r in self.replicas if r.ready and r is not exclude]
        if not ready:
            raise ServiceUnavailableError(
                f"model '{self.name}' has no ready replica (starting or restarting); retry shortly"
            )
        return min(ready, key=lambda r: r.load().outstanding)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        await self.until_ready()
        replica = self._pick()
        rid = request.request_id
        self._first_pending[rid] = self._clock()
        events = self._generate(request, replica)
        try:
            async for event in events:
                self._first_pending.pop(rid, None)
                yield event
        finally:
            self._first_pending.pop(rid, None)
            await events.aclose()

    async def _generate(
        self, request: GenerateRequest, replica: Replica
    ) -> AsyncGenerator[TokenEvent, None]:
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
        await self.until_ready()
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
