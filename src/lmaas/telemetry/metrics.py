"""Prometheus metrics, one registry per app (no module-level singletons)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
)
_TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lmaas_requests",
            "Inference requests by final HTTP status",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "lmaas_time_to_first_token_seconds",
            "Request arrival to first output token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "lmaas_time_per_output_token_seconds",
            "Mean time between output tokens of one request (after the first)",
            ["model"],
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "lmaas_e2e_request_latency_seconds",
            "Request arrival to last output token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "lmaas_request_queue_time_seconds",
            "Time a request waited before first scheduled",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.running = Gauge(
            "lmaas_num_requests_running", "Sequences in the running batch", ["model"], registry=r
        )
        self.waiting = Gauge(
            "lmaas_num_requests_waiting", "Sequences waiting for a slot", ["model"], registry=r
        )
        self.replicas_ready = Gauge(
            "lmaas_replicas_ready", "Worker replicas ready to serve", ["model"], registry=r
        )
        self.worker_restarts = Gauge(
            "lmaas_worker_restarts", "Worker restarts since start", ["model"], registry=r
        )
        self.admission_reserved = Gauge(
            "lmaas_admission_reserved_sequences",
            "Sequences of generation requests admitted and not yet ended (running or waiting)",
            ["model"],
            registry=r,
        )
        self.admission_refusals = Counter(
            "lmaas_admission_refusals",
            "Generation requests refused at admission (429) by reason: queue_full (capacity + "
            "max_queue), deadline (would not finish by the client's deadline), queue_wait "
            "(would wait past max_queue_wait or the SDK's read timeout to start)",
            ["model", "reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "lmaas_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "lmaas_generation_tokens", "Output tokens generated", ["model"], registry=r
        )
        self._add_prefix_cache_metrics(r)
        self._add_task_metrics(r)
        self._add_job_metrics(r)

    def _add_prefix_cache_metrics(self, r: CollectorRegistry) -> None:
        self.prefix_cache_queries = Counter(
            "lmaas_prefix_cache_queries",
            "Prompt tokens of admitted sequences, each choice counted (the prefix cache's "
            "lookups; hit rate = lmaas_prefix_cache_hits / this)",
            ["model"],
            registry=r,
        )
        self.prefix_cache_hits = Counter(
            "lmaas_prefix_cache_hits",
            "Prompt tokens whose KV cells came from the prefix cache instead of a prefill "
            "(the tokens it saved)",
            ["model"],
            registry=r,
        )

    def _add_task_metrics(self, r: CollectorRegistry) -> None:
        """The understanding endpoints (embeddings, classify, nli, score, tokenize)."""
        self.task_latency = Histogram(
            "lmaas_task_latency_seconds",
            "Engine time of one embed/classify/score/tokenize request",
            ["model", "task"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.task_inputs = Counter(
            "lmaas_task_inputs",
            "Inputs (texts, pairs) sent to tasks",
            ["model", "task"],
            registry=r,
        )
        self.task_batch_size = Histogram(
            "lmaas_task_batch_size",
            "Inputs in the worker forward pass a task ran in (batched across requests)",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )

    def _add_job_metrics(self, r: CollectorRegistry) -> None:
        """Jobs (batches): read from the jobs table every few seconds (jobs/metrics.py)."""
        self.jobs_queued = Gauge(
            "lmaas_jobs_queued", "Jobs waiting for a runner", ["kind"], registry=r
        )
        self.jobs_running = Gauge(
            "lmaas_jobs_running",
            "Jobs a runner works on (in progress, finalizing or cancelling)",
            ["kind"],
            registry=r,
        )
        self.jobs_finished = Counter(
            "lmaas_jobs_finished",
            "Jobs that ended, by final status (completed, failed, cancelled)",
            ["kind", "status"],
            registry=r,
        )
        self.job_duration = Histogram(
            "lmaas_job_duration_seconds",
            "First start to end of a job that ran",
            ["kind"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
