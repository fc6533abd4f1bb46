"""The ``cluster`` section of the settings: where replicas run (this machine, or a Ray cluster)
and what the resource pool counts."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmaas.config_placement import LabelSelector, RayResources


class ClusterSettings(BaseModel):
    """Where replicas run."""

    model_config = ConfigDict(extra="forbid")

    kind: Annotated[
        str,
        Field(
            min_length=1,
            description="Cluster kind that runs the replicas: `local` (worker processes on this "
            "machine), `ray` (Ray actors on a Ray cluster) or a kind an installed plugin "
            "registers",
        ),
    ] = "local"
    cpu_overcommit: Annotated[
        float,
        Field(
            gt=0,
            le=1024,
            description="CPU threads replicas may hold per core of the machine: a replica "
            "holds engine.threads threads, or as many as the machine has cores when "
            "engine.threads is 0 (the default), so the default lets a machine run 8 such "
            "replicas; a deployment or scale request beyond it is refused (409) and "
            "config-file replicas beyond it wait as pending",
        ),
    ] = 8.0
    reserve_memory_mb: Annotated[
        int,
        Field(
            ge=0,
            description="Memory (MiB) kept back from replicas for the gateway, its job runner, "
            "its template renderers and the system; replicas share the rest",
        ),
    ] = 1024
    cpus: Annotated[
        int | None,
        Field(
            ge=1,
            le=4096,
            description="Cores replicas may use (default: the cores this process may run on)",
        ),
    ] = None
    memory_mb: Annotated[
        int | None,
        Field(
            ge=1,
            description="Memory (MiB) of the machine as the pool counts it, before the reserve "
            "(default: the machine's total, or its cgroup limit when lower)",
        ),
    ] = None
    capacity_refresh_s: Annotated[
        float,
        Field(
            ge=0,
            le=3600,
            description="Seconds between two reads of the cluster's capacity (a Ray cluster's "
            "nodes joining or leaving): replicas waiting as pending are placed once it grew; "
            "0 reads it once, at start",
        ),
    ] = 5.0
    ray_address: Annotated[
        str | None,
        Field(
            min_length=1,
            description="Ray cluster to run replicas on (`HEAD_IP:6379`, `ray://...`, `auto`); "
            "setting it makes `ray` the default cluster kind",
        ),
    ] = None
    ray_namespace: Annotated[
        str, Field(min_length=1, description="Ray namespace of the replica actors")
    ] = "lmaas"
    ray_resources: Annotated[
        RayResources,
        Field(
            description="Custom Ray resources every replica actor asks for (e.g. "
            "{lmaas_worker: 1} to keep replicas on nodes started with that resource); a "
            "deployment's placement.resources adds to them"
        ),
    ] = Field(default_factory=dict)
    ray_label_selector: Annotated[
        LabelSelector,
        Field(
            description="Ray node labels every replica actor must land on (Ray's "
            "label_selector); a deployment's placement.label_selector adds to them"
        ),
    ] = Field(default_factory=dict)
    gateway_url: Annotated[
        str | None,
        Field(
            pattern=r"^https?://[^/\s]+$",
            description="How cluster nodes reach this gateway to fetch model blobs "
            "(`http://HOST:PORT`); default: this server's host (its Ray node address when it "
            "binds every interface) and port",
        ),
    ] = None
    node_cache_dir: Annotated[
        str,
        Field(
            min_length=1,
            description="Directory on each cluster node where replicas keep the model blobs "
            "they fetched (verified by sha256); `~` is the node's home",
        ),
    ] = "~/.lmaas/node-cache"
    node_cache_max_bytes: Annotated[
        int,
        Field(
            ge=0,
            description="Bytes of model blobs and folders the node cache may hold on each node "
            "(default 20 GiB): beyond it, those used least recently are evicted, never those "
            "of a replica or job running on that node; 0: no bound",
        ),
    ] = 20 << 30

    @model_validator(mode="after")
    def _ray_kind(self) -> Self:
        if self.ray_address is not None and "kind" not in self.model_fields_set:
            self.kind = "ray"
        return self
