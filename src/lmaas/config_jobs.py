"""The ``jobs:`` section of the settings (``Settings.jobs`` in :mod:`lmaas.config`, which
imports it from here): the job runner process and the batches it runs."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class JobSettings(BaseModel):
    """Long work (batches) run by a job runner process beside the gateway."""

    model_config = ConfigDict(extra="forbid")

    enabled: Annotated[
        bool,
        Field(
            description="Start the job runner process with the gateway; off, jobs are "
            "accepted and wait (queued) for a gateway that runs them",
        ),
    ] = True
    max_concurrent: Annotated[
        int, Field(ge=1, le=64, description="Jobs the runner works on at once")
    ] = 1
    line_concurrency: Annotated[
        int,
        Field(
            ge=1,
            le=256,
            description="Lines of one batch sent to the gateway at once (they share the "
            "engines' continuous batching with interactive traffic, at a lower priority)",
        ),
    ] = 16
    lease_seconds: Annotated[
        float,
        Field(
            ge=2,
            le=3600,
            description="How long a runner's hold on a job lasts unless renewed by its "
            "heartbeats: a job whose runner died is resumed (or failed) this long after",
        ),
    ] = 30.0
    max_attempts: Annotated[
        int,
        Field(
            ge=1,
            le=100,
            description="Runs of a job whose runner died before it is failed for good",
        ),
    ] = 3
    max_batch_lines: Annotated[
        int, Field(ge=1, le=1_000_000, description="Most lines (requests) in one batch")
    ] = 50_000
    max_completion_window_seconds: Annotated[
        int,
        Field(
            ge=1,
            le=30 * 86_400,
            description="The longest completion_window a batch may ask for (OpenAI's one "
            "value, 24h, by default); a batch not finished by then ends expired, with the "
            "lines answered so far in its output",
        ),
    ] = 86_400
