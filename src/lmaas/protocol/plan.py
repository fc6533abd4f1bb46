"""Capacity planning over HTTP: a model version's measured profile, and a plan for a load."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_BATCH = 1024


class ProfileBody(BaseModel):
    """What `lmaas profile` measured of one replica of a version (kept with the version)."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(ge=1, le=4096, description="CPU threads the measured replica ran with")
    cores: int = Field(ge=1, le=65536, description="Cores of the machine it was measured on")
    prefill_tokens_per_s: float = Field(ge=1e-6, le=1e9)
    decode_tokens_per_s: dict[int, float] = Field(
        description="Batch size (streams decoding together) -> aggregate output tokens/s",
        min_length=1,
        max_length=32,
    )
    overhead_s: float = Field(0.0, ge=0, le=60, description="Per request, beyond the engine")
    prefill_seconds: dict[int, float] = Field(
        default_factory=dict,
        max_length=32,
        description="Prompt tokens -> seconds of an uncached request with one output token",
    )
    thread_scaling: float = Field(
        0.75,
        gt=0,
        le=1.5,
        description="Rates go as threads ** thread_scaling (0.75: 2 threads did 1.68x 1 thread "
        "on the 2-core machine of BENCHMARKS.md)",
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

    @field_validator("prefill_seconds")
    @classmethod
    def _times(cls, times: dict[int, float]) -> dict[int, float]:
        for tokens, seconds in times.items():
            if not 1 <= tokens <= 10_000_000 or not 1e-6 <= seconds <= 86400:
                raise ValueError("prompt lengths are 1-10000000 tokens and times positive")
        return times

    @field_validator("decode_tokens_per_s")
    @classmethod
    def _rates(cls, rates: dict[int, float]) -> dict[int, float]:
        for batch, rate in rates.items():
            if not 1 <= batch <= MAX_BATCH or not 1e-6 <= rate <= 1e9:
                raise ValueError(f"batch sizes are 1-{MAX_BATCH} and rates positive")
        return rates


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
