"""A small in-memory ring of metric samples, so the console's charts have an hour of history
without an external time-series database (``GET /admin/metrics/history``).

Every ``metrics.history_interval_s`` the sampler reads the app's Prometheus registry (by the
exported metric names, as a scraper would) and the engines' health, and keeps one sample per
tick: per model, the rates over the tick (requests by HTTP status, prompt and output tokens),
the percentiles of the latency histograms' observations within the tick, and the gauges as
they stand (running and waiting sequences, replicas). Reading the registry has no side effect
(the ``/metrics`` route's per-replica gauges are set by that route, not here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from lmaas.engine.client import EngineClient
from lmaas.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

# Exported names (without the counters' ``_total``) the samples are built from.
REQUESTS: Final = "lmaas_requests"
PROMPT_TOKENS: Final = "lmaas_prompt_tokens"
GENERATION_TOKENS: Final = "lmaas_generation_tokens"
HISTOGRAMS: Final = {
    "ttft": "lmaas_time_to_first_token_seconds",
    "tpot": "lmaas_time_per_output_token_seconds",
    "e2e": "lmaas_e2e_request_latency_seconds",
    "queue": "lmaas_request_queue_time_seconds",
}
QUANTILES: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


@dataclass
class _Totals:
    """Cumulative values read from the registry at one tick, per model."""

    requests: dict[tuple[str, str], float] = field(default_factory=dict)  # (model, status)
    prompt_tokens: dict[str, float] = field(default_factory=dict)
    generation_tokens: dict[str, float] = field(default_factory=dict)
    # (histogram key, model) -> {upper bound: cumulative count}
    buckets: dict[tuple[str, str], dict[float, float]] = field(default_factory=dict)


def read_totals(metrics: Metrics) -> _Totals:
    """The counters and histogram buckets the samples need, summed over other labels."""
    totals = _Totals()
    by_name = {name: key for key, name in HISTOGRAMS.items()}
    for family in metrics.registry.collect():
        if family.name == REQUESTS:
            for s in family.samples:
                if s.name.endswith("_total"):
                    k = (s.labels.get("model", ""), s.labels.get("status", ""))
                    totals.requests[k] = totals.requests.get(k, 0.0) + s.value
        elif family.name in (PROMPT_TOKENS, GENERATION_TOKENS):
            target = totals.prompt_tokens
            if family.name == GENERATION_TOKENS:
                target = totals.generation_tokens
            for s in family.samples:
                if s.name.endswith("_total"):
                    model = s.labels.get("model", "")
                    target[model] = target.get(model, 0.0) + s.value
        elif family.name in by_name:
            key = by_name[family.name]
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    per = totals.buckets.setdefault((key, s.labels.get("model", "")), {})
                    bound = float(s.labels["le"])
                    per[bound] = per.get(bound, 0.0) + s.value
    return totals


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """``q`` of the observations whose cumulative bucket counts are ``buckets`` (upper bound
    -> count), interpolated linearly inside the bucket as Prometheus' ``histogram_quantile``
    does; ``None`` without observations. An answer in the ``+Inf`` bucket is the highest
    finite bound."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            share = (rank - below) / inside if inside > 0 else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


def _delta(now: float, before: float | None) -> float:
    """A counter's increase; a counter that went down was reset and counts from zero."""
    if before is None or now < before:
        return now
    return now - before


def _rate(value: float, seconds: float) -> float:
    return round(value / seconds, 4) if seconds > 0 else 0.0


class MetricHistory:
    """The ring and its sampler; kept on ``app.state.metric_history``.

    ``clock`` gives wall-clock seconds for the samples' ``t``; ``monotonic`` measures the
    ticks (tests inject both and call :meth:`sample` themselves).
    """

    def __init__(
        self,
        metrics: Metrics,
        engines: Mapping[str, EngineClient],
        *,
        interval: float,
        retention: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.engines = engines
        self.interval = interval
        self.retention = retention
        self._clock = clock
        self._monotonic = monotonic
        self._ring: deque[dict[str, Any]] = deque(maxlen=math.ceil(retention / interval) + 1)
        self._last: tuple[float, _Totals] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="metric-history")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a bad tick must not end the history
                log.exception("metric history: a sample failed")
            await asyncio.sleep(self.interval)

    def sample(self) -> dict[str, Any] | None:
        """Take one sample (the first tick only sets the baseline: ``None``)."""
        now = self._monotonic()
        totals = read_totals(self.metrics)
        last, self._last = self._last, (now, totals)
        if last is None:
            return None
        seconds = now - last[0]
        models = self._model_names(totals)
        entry = {
            "t": round(self._clock(), 3),
            "seconds": round(seconds, 3),
            "models": {m: self._model_sample(m, seconds, totals, last[1]) for m in models},
        }
        self._ring.append(entry)
        return entry

    def _model_names(self, totals: _Totals) -> list[str]:
        names = set(self.engines)
        names.update(model for model, _ in totals.requests)
        names.update(totals.generation_tokens)
        names.update(model for _, model in totals.buckets)
        names.discard("")
        return sorted(names)

    def _model_sample(
        self, model: str, seconds: float, totals: _Totals, before: _Totals
    ) -> dict[str, Any]:
        requests = {
            status: _rate(_delta(value, before.requests.get((m, status))), seconds)
            for (m, status), value in totals.requests.items()
            if m == model
        }
        out: dict[str, Any] = {
            "requests_per_s": {s: r for s, r in sorted(requests.items()) if r > 0},
            "prompt_tokens_per_s": _rate(
                _delta(totals.prompt_tokens.get(model, 0.0), before.prompt_tokens.get(model)),
                seconds,
            ),
            "generation_tokens_per_s": _rate(
                _delta(
                    totals.generation_tokens.get(model, 0.0), before.generation_tokens.get(model)
                ),
                seconds,
            ),
        }
        for key in HISTOGRAMS:
            out[key] = _tick_quantiles(
                totals.buckets.get((key, model), {}), before.buckets.get((key, model), {})
            )
        out.update(self._engine_state(model))
        return out

    def _engine_state(self, model: str) -> dict[str, Any]:
        engine = self.engines.get(model)
        if engine is None:
            return {"running": 0, "waiting": 0, "replicas": {}}
        h = engine.health()
        states: dict[str, int] = {}
        for r in h.replicas:
            states[r.state] = states.get(r.state, 0) + 1
        outstanding = engine.outstanding
        if outstanding == 0:  # the workers' last report may predate their last request's end
            return {"running": 0, "waiting": 0, "replicas": states}
        return {
            "running": h.running,
            "waiting": max(h.waiting, outstanding - h.running),
            "replicas": states,
        }

    def samples(self, after: float | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """The kept samples newer than ``after`` (wall-clock seconds), oldest first; with
        ``model``, only that model's part of each."""
        chosen: Iterable[dict[str, Any]] = (
            s for s in list(self._ring) if after is None or s["t"] > after
        )
        if model is None:
            return list(chosen)
        return [
            {**s, "models": {model: s["models"][model]} if model in s["models"] else {}}
            for s in chosen
        ]


def _tick_quantiles(
    now: Mapping[float, float], before: Mapping[float, float]
) -> dict[str, float] | None:
    """Percentiles (seconds) of the observations made between two readings; ``None`` when
    there were none."""
    window = {bound: _delta(count, before.get(bound)) for bound, count in now.items()}
    out: dict[str, float] = {}
    for name, q in QUANTILES:
        value = quantile(q, window)
        if value is None:
            return None
        out[name] = round(value, 5)
    return out
