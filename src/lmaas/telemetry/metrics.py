"""Prometheus metrics, one registry per app (no module-level singletons)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

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
# Tokens in one request's prompt or output: powers of two up to 32k.
_LENGTH_BUCKETS = tuple(float(2**i) for i in range(16))


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
        self._add_request_metrics(r)
        self._add_worker_metrics(r)
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

    def _add_request_metrics(self, r: CollectorRegistry) -> None:
        """What generation requests asked for and how they ended, and who sent requests."""
        self.finish_reasons = Counter(
            "lmaas_request_finish_reasons",
            "Generated sequences (choices) by why they ended: stop (end of text or a stop "
            "string), length (max_tokens or the context), abort (the client left or a cancel)",
            ["model", "reason"],
            registry=r,
        )
        self.request_prompt_tokens = Histogram(
            "lmaas_request_prompt_tokens",
            "Prompt tokens of one generation request (every prompt of it)",
            ["model"],
            buckets=_LENGTH_BUCKETS,
            registry=r,
        )
        self.request_generation_tokens = Histogram(
            "lmaas_request_generation_tokens",
            "Output tokens of one generation request (every choice of it)",
            ["model"],
            buckets=_LENGTH_BUCKETS,
            registry=r,
        )
        self.key_requests = Counter(
            "lmaas_key_requests",
            "Inference requests by API key (its id and name, never the secret; 'none' without "
            "a key) and HTTP status class (2xx, 4xx, 5xx)",
            ["key_id", "key_name", "status_class"],
            registry=r,
        )

    def _add_worker_metrics(self, r: CollectorRegistry) -> None:
        """What generation workers report about their KV cache and scheduler."""
        self.kv_used = Gauge(
            "lmaas_kv_cache_used_cells",
            "KV cache cells in use in a replica (running sequences and cached prefixes)",
            ["model", "replica"],
            registry=r,
        )
        self.kv_capacity = Gauge(
            "lmaas_kv_cache_capacity_cells",
            "KV cache cells a replica's sequences may use",
            ["model", "replica"],
            registry=r,
        )
        self.kv_usage = Gauge(
            "lmaas_kv_cache_usage_ratio",
            "Fraction of a replica's KV cache in use (0 to 1)",
            ["model", "replica"],
            registry=r,
        )
        self.preemptions = Counter(
            "lmaas_preemptions",
            "Running sequences the workers' schedulers sent back to the queue, by reason: "
            "kv_cache (no room for the next tokens), fairness (for a higher priority class or "
            "a key owed its share)",
            ["model", "reason"],
            registry=r,
        )
        self.admission_limit = Gauge(
            "lmaas_admission_limit_sequences",
            "Sequences a model admits at once: its ready replicas' slots plus max_queue "
            "(saturation = lmaas_admission_reserved_sequences / this)",
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

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its content type: OpenMetrics when ``accept`` (the request's
        Accept header) asks for it, else Prometheus text 0.0.4."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
