"""The engines' state as metrics, read when ``/metrics`` is scraped (no I/O: what the replicas
last reported over their channels)."""

from __future__ import annotations

from collections.abc import Mapping

from lmaas.engine.client import EngineClient
from lmaas.gateway.serving.admission import Admission
from lmaas.telemetry.metrics import Metrics


class EngineGauges:
    """Sets the per-model and per-replica gauges, and turns the workers' cumulative preemption
    counts into counter increments (a restarted worker counts from zero again)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # The count each replica (by its id) last reported, by reason.
        self._preemptions_seen: dict[tuple[str, str], int] = {}

    def refresh(self, engines: Mapping[str, EngineClient], admission: Admission | None) -> None:
        m = self.metrics
        for gauge in (m.kv_used, m.kv_capacity, m.kv_usage):
            gauge.clear()  # replicas that are gone leave no series behind
        seen: dict[tuple[str, str], int] = {}
        for name, engine in engines.items():
            if admission is not None:
                m.admission_reserved.labels(name).set(admission.load(name).reserved)
                m.admission_limit.labels(name).set(engine.capacity + admission.limits.max_queue)
            h = engine.health()
            m.running.labels(name).set(h.running)
            m.waiting.labels(name).set(max(h.waiting, engine.outstanding - h.running))
            m.replicas_ready.labels(name).set(sum(1 for r in h.replicas if r.state == "ready"))
            m.worker_restarts.labels(name).set(sum(r.restarts for r in h.replicas))
            for r in h.replicas:
                for reason, count in r.preemptions.items():
                    seen[(r.id, reason)] = count
                    before = self._preemptions_seen.get((r.id, reason), 0)
                    # Fewer than before: the worker restarted and counts from zero.
                    added = count - before if count >= before else count
                    child = m.preemptions.labels(name, reason)  # the series exists from 0
                    if added:
                        child.inc(added)
                if r.state != "ready" or r.kv_capacity <= 0:
                    continue
                replica = str(r.index)
                m.kv_used.labels(name, replica).set(r.kv_used)
                m.kv_capacity.labels(name, replica).set(r.kv_capacity)
                m.kv_usage.labels(name, replica).set(min(r.kv_used / r.kv_capacity, 1.0))
        self._preemptions_seen = seen
