"""Deployments over the admin API: request bodies, responses and the control interface the
gateway calls (implemented by ``lmaas.controller.manager.DeploymentManager``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from lmaas.config import AutoscalingConfig, EngineConfig, PlacementConfig
from lmaas.names import SERVED_NAME_PATTERN

# pending: no replica is ready and the resource pool has no room for the ones it wants
DeploymentState = Literal[
    "ready", "starting", "rolling", "degraded", "failed", "stopped", "pending"
]


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[
        str,
        Field(
            min_length=1,
            max_length=200,
            description="Model of the store: `name` (follows `latest`), `name:alias` "
            "(follows the alias) or `name:3` (pinned)",
        ),
    ]
    name: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=128,
            pattern=SERVED_NAME_PATTERN,
            description="Name clients put in the `model` field (default: the model's name)",
        ),
    ] = None
    replicas: Annotated[
        int,
        Field(ge=0, le=64, description="Worker processes (not with `autoscaling`)"),
    ] = 1
    engine: EngineConfig | None = None
    autoscaling: Annotated[
        AutoscalingConfig | None,
        Field(
            description="Scale replicas with the load, with Ray Serve's names (min_replicas, "
            "max_replicas, initial_replicas, target_ongoing_requests, upscale_delay_s, "
            "downscale_delay_s, ...)"
        ),
    ] = None
    placement: Annotated[
        PlacementConfig | None,
        Field(
            description="Ray resources and node labels of the replicas' actors (a Ray cluster; "
            "refused on the local kind)"
        ),
    ] = None
    wait: Annotated[
        bool, Field(description="Answer only once every replica is ready (or failed)")
    ] = False


class DeploymentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: Annotated[int | None, Field(ge=0, le=64)] = None
    model: Annotated[
        str | None,
        Field(min_length=1, max_length=200, description="Serve another version or alias"),
    ] = None
    autoscaling: Annotated[
        AutoscalingConfig | None,
        Field(
            description="A new autoscaling config (replaces the old one whole); `null` stops "
            "autoscaling, keeping the replicas there are"
        ),
    ] = None
    placement: Annotated[
        PlacementConfig | None,
        Field(
            description="A new placement (replaces the old one whole; `null` removes it): "
            "the replicas are replaced by a rolling update"
        ),
    ] = None
    wait: bool = False


class ReplicaOut(BaseModel):
    id: str = Field(description="Opaque replica id, unique within the cluster")
    index: int = Field(description="Ordinal within the deployment")
    node: str = Field(description="The machine (cluster node) the replica runs on")
    state: str
    version: int | None
    restarts: int
    outstanding: int
    last_error: str | None


class ResourcesOut(BaseModel):
    """What one replica of a deployment holds in the resource pool."""

    cpu_threads: int = Field(description="CPU threads (engine.threads, or every core when 0)")
    memory_bytes: int = Field(description="Its own memory: runtime, buffers and KV cache")
    shared_memory_bytes: int = Field(
        description="Weights mapped from the model file, counted once per machine"
    )
    measured: bool = Field(
        description="memory_bytes is what a loaded replica measured (else an estimate)"
    )


class PoolOut(BaseModel):
    """The machine's capacity for replicas and what the placed replicas hold of it."""

    node: str
    cores: int
    cpu_threads: int = Field(description="cores x cluster.cpu_overcommit")
    cpu_threads_used: int
    memory_bytes: int = Field(description="The machine's memory less cluster.reserve_memory_mb")
    memory_bytes_used: int
    replicas: int = Field(description="Replicas placed (pending ones excluded)")


class AutoscalingEventOut(BaseModel):
    """One decision of the autoscaler that changed a deployment's replicas."""

    at: datetime
    direction: Literal["up", "down"]
    from_replicas: int
    to_replicas: int
    reason: str
    ongoing_requests: int = Field(description="Running, queued and held requests at the tick")
    queued_requests: int
    oldest_wait_s: float = Field(description="The longest wait for a first token at the tick")


class AutoscalingOut(BaseModel):
    config: AutoscalingConfig
    desired_replicas: int = Field(description="What the policy decided last")
    average_ongoing_requests: float = Field(description="Over look_back_period_s, last tick")
    reason: str = Field(description="Why the last tick decided what it did")
    events: list[AutoscalingEventOut] = Field(description="Recent decisions, oldest first")


class DeploymentOut(BaseModel):
    object: Literal["deployment"] = "deployment"
    name: str
    model: str | None
    follows: str | None = Field(description="The alias this deployment follows, if any")
    version: int | None
    path: str | None
    replicas: int = Field(description="Desired replica count")
    ready_replicas: int
    state: DeploymentState
    source: Literal["config", "api"]
    created_at: datetime | None
    last_error: str | None
    replica_status: list[ReplicaOut]
    resources: ResourcesOut | None = Field(
        default=None, description="What each replica holds (without a resource pool: null)"
    )
    autoscaling: AutoscalingOut | None = Field(
        default=None, description="The autoscaler's config and decisions (null: not autoscaled)"
    )
    placement: PlacementConfig | None = Field(
        default=None, description="Ray resources and node labels of its replicas (null: none)"
    )


class DeploymentListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[DeploymentOut]
    pool: PoolOut | None = Field(default=None, description="The machine's capacity and use")


class DeploymentControl(Protocol):
    """What the gateway needs from the deployment manager."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def list(self) -> list[DeploymentOut]: ...

    def get(self, name: str) -> DeploymentOut: ...

    async def create(self, body: DeploymentCreate) -> DeploymentOut: ...

    async def update(self, name: str, body: DeploymentPatch) -> DeploymentOut: ...

    async def delete(self, name: str) -> None: ...

    async def on_aliases_changed(self, model: str) -> None: ...

    def served_versions(self) -> set[tuple[str, int]]: ...

    def pool_usage(self) -> PoolOut | None: ...

    def collectors(self) -> Sequence[Any]:
        """Prometheus collectors of the control plane (the autoscaler's metrics), registered
        in the app's registry."""
        ...
