"""The autoscaler's control loop: every ``autoscaler.interval_s`` (and at once when a request
arrives at a deployment with no ready replica), each autoscaled deployment's load is read from
its router (``ReplicatedEngine.demand``), fed to the pure policy (``controller/autoscale.py``)
and the decision applied through the deployment's own scaling path (``Deployment.scale``: what
the resource pool has no room for is left pending). Nothing here depends on the cluster kind.

Every decision that changes the replicas is an event with its reason (the last ``_EVENTS`` of
each deployment, in ``GET /admin/deployments/NAME`` under ``autoscaling.events``, and in the
log) and counts in ``lmaas_autoscaler_decisions_total{model,direction}``; the policy's desired
replicas and averaged load are the gauges ``lmaas_autoscaler_desired_replicas{model}`` and
``lmaas_autoscaler_ongoing_requests{model}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from lmaas.config_autoscaling import AutoscalerSettings, AutoscalingConfig
from lmaas.controller.autoscale import (
    AutoscalingContext,
    PolicyState,
    Signals,
    autoscaling_policy,
    direction,
)
from lmaas.controller.deployment import Deployment
from lmaas.protocol.deploy import AutoscalingEventOut, AutoscalingOut

log = logging.getLogger(__name__)

_EVENTS = 50  # decisions kept per deployment


@dataclass(slots=True)
class _Tracked:
    deployment: Deployment
    config: AutoscalingConfig
    state: PolicyState = field(default_factory=PolicyState)
    desired: int = 0
    events: deque[AutoscalingEventOut] = field(default_factory=lambda: deque(maxlen=_EVENTS))


class Autoscaler:
    """Runs the policy of every tracked deployment; ``start`` the loop, ``close`` it."""

    def __init__(
        self, settings: AutoscalerSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._tracked: dict[str, _Tracked] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Not registered anywhere yet: the app registers them in its registry (``collectors``).
        self.decisions = Counter(
            "lmaas_autoscaler_decisions",
            "Autoscaler decisions that changed a deployment's replicas, by direction",
            ["model", "direction"],
            registry=None,
        )
        self.desired = Gauge(
            "lmaas_autoscaler_desired_replicas",
            "Replicas the autoscaling policy wants for a deployment (pending ones included)",
            ["model"],
            registry=None,
        )
        self.ongoing = Gauge(
            "lmaas_autoscaler_ongoing_requests",
            "Ongoing requests (running, queued, held) averaged over look_back_period_s",
            ["model"],
            registry=None,
        )

    def collectors(self) -> list[Any]:
        return [self.decisions, self.desired, self.ongoing]

    # -- what is tracked -------------------------------------------------------------------------

    def track(self, name: str, deployment: Deployment, config: AutoscalingConfig) -> None:
        """Scale ``deployment`` by ``config`` from now on (replacing an earlier config; its
        events are kept)."""
        old = self._tracked.get(name)
        tracked = _Tracked(deployment, config, desired=len(deployment.replicas))
        if old is not None and old.deployment is deployment:
            tracked.events = old.events
        self._tracked[name] = tracked
        engine = deployment.engine
        engine.hold_timeout = (
            self.settings.cold_start_timeout_s if config.min_replicas == 0 else None
        )
        engine.on_demand = self.wake
        self.desired.labels(name).set(tracked.desired)
        self.wake()

    def untrack(self, name: str) -> None:
        tracked = self._tracked.pop(name, None)
        if tracked is None:
            return
        tracked.deployment.engine.hold_timeout = None
        tracked.deployment.engine.on_demand = None
        for gauge in (self.desired, self.ongoing):
            with contextlib.suppress(KeyError):
                gauge.remove(name)

    def tracks(self, name: str) -> bool:
        return name in self._tracked

    def status(self, name: str) -> AutoscalingOut | None:
        tracked = self._tracked.get(name)
        if tracked is None:
            return None
        return AutoscalingOut(
            config=tracked.config,
            desired_replicas=tracked.desired,
            average_ongoing_requests=round(tracked.state.average, 3),
            reason=tracked.state.reason,
            events=list(tracked.events),
        )

    # -- the loop --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="autoscaler")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """Tick now (a request is waiting for a replica)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.interval_s)
            self._wake.clear()
            try:
                await self.tick()
            except Exception:  # a bug in one tick must not end autoscaling
                log.exception("autoscaler tick failed")

    async def tick(self) -> None:
        """Run every tracked deployment's policy once and apply what it decides."""
        for name, tracked in list(self._tracked.items()):
            if self._tracked.get(name) is tracked:
                await self._tick_one(name, tracked)

    async def _tick_one(self, name: str, tracked: _Tracked) -> None:
        d = tracked.deployment
        if d.busy:
            return  # rolling or changing: its replicas are in flux, look at the next tick
        demand = d.engine.demand()
        current = len(d.replicas)
        pending = len(d.pending)
        ctx = AutoscalingContext(
            config=tracked.config,
            now=self.clock(),
            current_replicas=current,
            signals=Signals(demand.ongoing, demand.queued, demand.oldest_wait_s, demand.held),
            state=tracked.state,
            pending_replicas=pending,
            starting_replicas=sum(1 for r in d.placed if not r.ready),
        )
        desired, tracked.state = autoscaling_policy(ctx)
        tracked.desired = desired
        self.desired.labels(name).set(desired)
        self.ongoing.labels(name).set(tracked.state.average)
        way = direction(current, desired)
        if way == "none":
            return
        reason = tracked.state.reason
        if way == "up":
            short = d.fits(desired - current)
            if short is not None:
                reason += f"; no room for all of them yet (left pending): {short}"
        tracked.events.append(
            AutoscalingEventOut(
                at=datetime.now(UTC),
                direction=way,
                from_replicas=current,
                to_replicas=desired,
                reason=reason,
                ongoing_requests=demand.ongoing,
                queued_requests=demand.queued,
                oldest_wait_s=round(demand.oldest_wait_s, 3),
            )
        )
        self.decisions.labels(name, way).inc()
        log.info("autoscaler: %s %d -> %d replicas: %s", name, current, desired, reason)
        await d.scale(desired)
