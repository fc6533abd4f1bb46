"""The metric history ring: rates, per-tick percentiles and gauges from a real registry."""

from __future__ import annotations

import pytest

from lmaas.engine.client import EngineHealth
from lmaas.gateway.metric_history import MetricHistory, quantile
from lmaas.telemetry.metrics import Metrics
from tests.fakes import FakeEngine


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def history(metrics: Metrics, clock: Clock, retention: float = 60.0) -> MetricHistory:
    return MetricHistory(
        metrics,
        {"m": FakeEngine("m")},
        interval=5.0,
        retention=retention,
        clock=lambda: clock.now + 1_700_000_000,
        monotonic=clock,
    )


def test_quantile_interpolates_inside_a_bucket_as_prometheus_does() -> None:
    # 10 observations: 4 at or under 0.1, 10 at or under 0.5.
    buckets = {0.1: 4.0, 0.5: 10.0, float("inf"): 10.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (1 / 6))
    assert quantile(0.2, buckets) == pytest.approx(0.05)
    assert quantile(0.99, {0.1: 0.0, 1.0: 0.0, float("inf"): 3.0}) == 1.0  # in +Inf: top bound
    assert quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.5, {}) is None


def test_rates_and_percentiles_cover_only_what_happened_within_the_tick() -> None:
    metrics, clock = Metrics(), Clock()
    h = history(metrics, clock)
    metrics.requests.labels("m", "/v1/chat/completions", "200").inc(3)  # before the baseline
    metrics.ttft.labels("m").observe(30.0)
    assert h.sample() is None  # the baseline
    clock.now += 5
    for _ in range(10):
        metrics.requests.labels("m", "/v1/chat/completions", "200").inc()
    metrics.requests.labels("m", "/v1/completions", "200").inc(5)
    metrics.requests.labels("m", "/v1/chat/completions", "429").inc(5)
    metrics.generation_tokens.labels("m").inc(100)
    for value in (0.02, 0.02, 0.02, 0.3):
        metrics.ttft.labels("m").observe(value)
    s = h.sample()
    assert s is not None and s["seconds"] == 5.0 and s["t"] == 1_700_001_005.0
    m = s["models"]["m"]
    assert m["requests_per_s"] == {"200": 3.0, "429": 1.0}
    assert m["generation_tokens_per_s"] == 20.0
    assert m["prompt_tokens_per_s"] == 0.0
    # The 30 s observation before the baseline is not in this tick's percentiles.
    assert 0.01 < m["ttft"]["p50"] <= 0.025
    assert 0.25 < m["ttft"]["p99"] <= 0.5
    assert m["tpot"] is None and m["e2e"] is None
    assert m["running"] == 0 and m["waiting"] == 0 and m["replicas"] == {"ready": 1}
    clock.now += 5
    quiet = h.sample()
    assert quiet is not None
    assert quiet["models"]["m"]["requests_per_s"] == {} and quiet["models"]["m"]["ttft"] is None


def test_the_ring_keeps_the_retention_and_answers_after_a_time_and_per_model() -> None:
    metrics, clock = Metrics(), Clock()
    metrics.requests.labels("other", "/v1/embeddings", "200").inc()
    h = history(metrics, clock, retention=20.0)  # 20 s at 5 s: 5 samples kept
    h.sample()
    for _ in range(8):
        clock.now += 5
        h.sample()
    samples = h.samples()
    assert len(samples) == 5
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    assert set(samples[0]["models"]) == {"m", "other"}
    later = h.samples(after=samples[2]["t"])
    assert [s["t"] for s in later] == [s["t"] for s in samples[3:]]
    only = h.samples(model="other")
    assert all(set(s["models"]) == {"other"} for s in only)
    assert all(s["models"] == {} for s in h.samples(model="nope"))


def test_a_counter_that_went_down_counts_from_zero() -> None:
    metrics, clock = Metrics(), Clock()
    h = history(metrics, clock)
    metrics.generation_tokens.labels("m").inc(50)
    h.sample()
    fresh = Metrics()  # as if the registry were rebuilt: counters start over
    fresh.generation_tokens.labels("m").inc(10)
    h.metrics = fresh
    clock.now += 5
    s = h.sample()
    assert s is not None and s["models"]["m"]["generation_tokens_per_s"] == 2.0


class StaleReport(FakeEngine):
    """A worker whose last report still counts a sequence that has since finished."""

    def health(self) -> EngineHealth:
        h = super().health()
        return EngineHealth(ready=h.ready, running=1, waiting=2, replicas=h.replicas)


def test_nothing_runs_or_waits_while_nothing_is_outstanding() -> None:
    metrics, clock = Metrics(), Clock()
    engine = StaleReport("m")
    h = MetricHistory(metrics, {"m": engine}, interval=5.0, retention=60.0, monotonic=clock)
    h.sample()
    clock.now += 5
    s = h.sample()
    assert s is not None and (s["models"]["m"]["running"], s["models"]["m"]["waiting"]) == (0, 0)
    engine._outstanding.add("r1")  # one request in flight: the report is believed
    clock.now += 5
    s = h.sample()
    assert s is not None and (s["models"]["m"]["running"], s["models"]["m"]["waiting"]) == (1, 2)
