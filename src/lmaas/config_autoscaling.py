"""Autoscaling: a deployment's ``autoscaling`` object (``AutoscalingConfig``, in a config file's
model, ``POST /admin/deployments`` and ``lmaas deploy``) and the ``autoscaler:`` section of the
settings (``AutoscalerSettings``). :mod:`lmaas.config` imports both from here.

The names are Ray Serve's ``autoscaling_config`` names, with the same meaning, so a Ray Serve
user reads them as they know them; ``max_queue_wait_s`` is lmaas' own.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_REPLICAS = 64  # as many as a deployment may ask for by hand


class AutoscalingConfig(BaseModel):
    """How many replicas a deployment runs, decided from its load every tick."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: Annotated[
        int,
        Field(
            ge=0,
            le=MAX_REPLICAS,
            description="Fewest replicas; 0 allows scale-to-zero (a request then waits for a "
            "replica to start instead of failing)",
        ),
    ] = 1
    max_replicas: Annotated[int, Field(ge=1, le=MAX_REPLICAS, description="Most replicas")] = 1
    initial_replicas: Annotated[
        int | None,
        Field(
            ge=0,
            le=MAX_REPLICAS,
            description="Replicas at deploy time and at every start (default: min_replicas)",
        ),
    ] = None
    target_ongoing_requests: Annotated[
        float,
        Field(
            gt=0,
            le=100_000,
            description="Requests per replica the autoscaler aims at: running plus waiting "
            "in the replica's queue (and those held while scaling from zero)",
        ),
    ] = 2.0
    upscale_delay_s: Annotated[
        float,
        Field(
            ge=0,
            le=86_400,
            description="Seconds the load must keep asking for more replicas before they are added",
        ),
    ] = 30.0
    downscale_delay_s: Annotated[
        float,
        Field(
            ge=0,
            le=86_400,
            description="Seconds the load must keep asking for fewer replicas before they are "
            "retired",
        ),
    ] = 600.0
    downscale_to_zero_delay_s: Annotated[
        float | None,
        Field(
            ge=0,
            le=86_400,
            description="The delay for the last replica when going to zero (default: "
            "downscale_delay_s)",
        ),
    ] = None
    upscaling_factor: Annotated[
        float | None,
        Field(
            gt=0,
            le=100,
            description="Multiplies each upscale step (below 1: more cautious); default 1",
        ),
    ] = None
    downscaling_factor: Annotated[
        float | None,
        Field(
            gt=0,
            le=100,
            description="Multiplies each downscale step (below 1: more cautious); default 1",
        ),
    ] = None
    look_back_period_s: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="Seconds over which ongoing requests are averaged",
        ),
    ] = 30.0
    max_queue_wait_s: Annotated[
        float | None,
        Field(
            gt=0,
            le=3600,
            description="lmaas' own: add a replica when the oldest request still without its "
            "first token has waited longer than this, whatever the average says (and never "
            "scale down meanwhile); default: off",
        ),
    ] = None

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({initial}) must be between min_replicas "
                f"({self.min_replicas}) and max_replicas ({self.max_replicas})"
            )
        return self

    @property
    def start_replicas(self) -> int:
        """Replicas at deploy time and at every start."""
        return self.min_replicas if self.initial_replicas is None else self.initial_replicas

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


class AutoscalerSettings(BaseModel):
    """The control loop that runs every autoscaled deployment's policy."""

    model_config = ConfigDict(extra="forbid")

    interval_s: Annotated[
        float,
        Field(
            gt=0,
            le=60,
            description="Seconds between two ticks of the autoscaler (a request arriving at "
            "a deployment scaled to zero wakes it at once)",
        ),
    ] = 1.0
    cold_start_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="Seconds a request to a deployment with no ready replica and "
            "min_replicas 0 waits for one before it fails with a 503",
        ),
    ] = 120.0
