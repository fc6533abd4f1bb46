"""The ``jobs:`` section of the settings (``Settings.jobs`` in :mod:`lmaas.config`, which
imports it from here): the job runner process and the batches it runs."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

# The kinds a runner on a Ray node can run: they read their inputs (and a fine-tune's or a
# quantization's source model, by digest) and write their outputs (files, new model versions)
# through the gateway. Batches and eval runs go there by default; fine-tuning and quantizing
# when asked (they want more CPUs and memory than a runner of lines does: see ``per_kind``).
RAY_KINDS: Final = ("batch", "eval_run")
RayKind = Literal["batch", "eval_run", "fine_tune", "quantize"]


class RayRunnerDemand(BaseModel):
    """What one job runner actor asks Ray for (unset fields: the ``jobs.ray`` ones)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: Annotated[
        float | None, Field(ge=0, le=1024, description="CPUs the runner actor asks Ray for")
    ] = None
    memory: Annotated[
        int | None,
        Field(ge=0, description="Bytes of memory the runner actor asks Ray for (0: none)"),
    ] = None
    resources: Annotated[
        dict[str, float] | None,
        Field(description="Custom Ray resources the runner actor asks for (pins it to nodes)"),
    ] = None


class RayJobSettings(BaseModel):
    """Job runners as Ray actors (``cluster.kind: ray`` with a PostgreSQL catalog)."""

    model_config = ConfigDict(extra="forbid")

    kinds: Annotated[
        list[RayKind],
        Field(
            description="Kinds of jobs run by runner actors on the Ray cluster (the others, "
            "and every kind on SQLite, by the runner beside the gateway); [] keeps them all here",
        ),
    ] = list(RAY_KINDS)
    num_cpus: Annotated[
        float, Field(ge=0, le=1024, description="CPUs a runner actor asks Ray for")
    ] = 0.5
    memory: Annotated[
        int, Field(ge=0, description="Bytes of memory a runner actor asks Ray for (0: none)")
    ] = 0
    resources: Annotated[
        dict[str, float],
        Field(description="Custom Ray resources a runner actor asks for (pins it to nodes)"),
    ] = Field(default_factory=dict)
    max_checkpoint_bytes: Annotated[
        int,
        Field(
            ge=1024,
            description="Largest training checkpoint (one tar of its weights and optimizer "
            "state) a fine-tune on a Ray node keeps at the gateway, so that a resume on another "
            "node goes on from it (a larger one is refused, 413, and not kept)",
        ),
    ] = 8 * 1024**3
    per_kind: Annotated[
        dict[RayKind, RayRunnerDemand],
        Field(
            description="A kind's own request over the ones above: kinds whose requests "
            "differ get runner actors of their own",
        ),
    ] = Field(default_factory=dict)

    def demand(self, kind: str) -> tuple[float, int, tuple[tuple[str, float], ...]]:
        """The (num_cpus, memory, resources) of the actor that runs ``kind``."""
        own = self.per_kind.get(kind)  # type: ignore[call-overload]
        cpus = own.num_cpus if own and own.num_cpus is not None else self.num_cpus
        memory = own.memory if own and own.memory is not None else self.memory
        resources = own.resources if own and own.resources is not None else self.resources
        return cpus, memory, tuple(sorted(resources.items()))


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
    ray: Annotated[
        RayJobSettings,
        Field(description="Job runners on the Ray cluster (cluster.kind ray, PostgreSQL)"),
    ] = Field(default_factory=RayJobSettings)
