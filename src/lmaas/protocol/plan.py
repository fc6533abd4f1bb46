"""Capacity planning over HTTP: a model version's measured profile, and a plan for a load."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

MAX_BATCH = 1024
# Exponents of the threads that prefill and decode rates go with when a profile measured one
# thread count only (profiles before `lmaas profile` measured a second one): the one exponent
# of before, 2 threads serving 1.68 x 1 thread on the 2-core machine of BENCHMARKS.md.
PREFILL_THREAD_SCALING = 0.75
DECODE_THREAD_SCALING = 0.75


def _check_times(times: dict[int, float]) -> dict[int, float]:
    for tokens, seconds in times.items():
        if not 1 <= tokens <= 10_000_000 or not 1e-6 <= seconds <= 86400:
            raise ValueError("prompt lengths are 1-10000000 tokens and times positive")
    return times


def _check_rates(rates: dict[int, float]) -> dict[int, float]:
    for batch, rate in rates.items():
        if not 1 <= batch <= MAX_BATCH or not 1e-6 <= rate <= 1e9:
            raise ValueError(f"batch sizes are 1-{MAX_BATCH} and rates positive")
    return rates


PrefillTimes = Annotated[dict[int, float], AfterValidator(_check_times)]
DecodeRates = Annotated[dict[int, float], AfterValidator(_check_rates)]


class ThreadRatesBody(BaseModel):
    """The same replica measured with another number of threads."""

    model_config = ConfigDict(extra="forbid")

    prefill_seconds: PrefillTimes = Field(
        min_length=1,
        max_length=32,
        description="Prompt tokens -> seconds of an uncached request with one output token",
    )
    decode_tokens_per_s: DecodeRates = Field(
        min_length=1, max_length=32, description="Batch size -> aggregate output tokens/s"
    )


class ProfileBody(BaseModel):
    """What `lmaas profile` measured of one replica of a version (kept with the version)."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(ge=1, le=4096, description="CPU threads the measured replica ran with")
    cores: int = Field(ge=1, le=65536, description="Cores of the machine it was measured on")
    prefill_tokens_per_s: float = Field(ge=1e-6, le=1e9)
    decode_tokens_per_s: DecodeRates = Field(
        description="Batch size (streams decoding together) -> aggregate output tokens/s",
        min_length=1,
        max_length=32,
    )
    overhead_s: float = Field(0.0, ge=0, le=60, description="Per request, beyond the engine")
    prefill_seconds: PrefillTimes = Field(
        default_factory=dict,
        max_length=32,
        description="Prompt tokens -> seconds of an uncached request with one output token",
    )
    at_threads: dict[int, ThreadRatesBody] = Field(
        default_factory=dict,
        max_length=8,
        description="Thread count -> prefill times and decode rates measured with it: how "
        "each phase scales with threads (the planner fits a power of the threads through them)",
    )
    prefill_thread_scaling: float = Field(
        PREFILL_THREAD_SCALING,
        gt=0,
        le=1.5,
        description="Prefill rates go as threads ** this where at_threads does not say",
    )
    decode_thread_scaling: float = Field(
        DECODE_THREAD_SCALING,
        gt=0,
        le=1.5,
        description="Decode rates go as threads ** this where at_threads does not say",
    )
    thread_scaling: float | None = Field(
        None,
        gt=0,
        le=1.5,
        description="Profiles before prefill_thread_scaling and decode_thread_scaling: read, "
        "not used",
    )
    memory_bytes: int = Field(ge=0, le=2**50, description="One replica's: weights, runtime, KV")
    max_num_seqs: int = Field(ge=1, le=4096)
    measured_at: datetime | None = None

    mixed_prompt_tokens: int = Field(0, ge=0, le=10_000_000)
    mixed_output_tokens: int = Field(0, ge=0, le=10_000_000)
    mixed_streams: int = Field(0, ge=0, le=MAX_BATCH)
    mixed_seconds: float = Field(
        0.0, ge=0, le=86400, description="Per request, in a saturated mixed run (0: none)"
    )

    @field_validator("at_threads")
    @classmethod
    def _thread_counts(cls, found: dict[int, ThreadRatesBody]) -> dict[int, ThreadRatesBody]:
        if any(not 1 <= threads <= 4096 for threads in found):
            raise ValueError("thread counts are 1-4096")
        return found

    @model_validator(mode="after")
    def _other_counts(self) -> ProfileBody:
        if self.threads in self.at_threads:
            raise ValueError("at_threads holds other thread counts than the profile's own")
        return self


class PredictionOut(BaseModel):
    replicas: int
    threads: int = Field(description="CPU threads of each replica")
    saturated: bool = Field(description="The load exceeds what these replicas serve")
    utilisation: float
    requests_per_s: float
    output_tokens_per_s: float
    max_requests_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    latency_p50_s: float
    latency_p99_s: float
    concurrency: float = Field(description="Streams decoding together on each replica")


class PlanOut(BaseModel):
    object: Literal["plan"] = "plan"
    model: str
    version: int
    feasible: bool
    reason: str
    replicas: int | None
    threads_per_replica: int | None
    nodes: int = Field(description="Machines like `machine` the plan needs")
    cores: int
    memory_bytes: int
    expected: PredictionOut | None
    candidates: list[PredictionOut]
    machine: dict[str, int] = Field(description="cores and memory_bytes of one machine")
    profile: ProfileBody
