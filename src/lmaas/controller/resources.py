"""The deployment manager's side of the resource pool: what a model takes in memory (from its
store version, its file, or a loaded replica's measurement), and deployments and the pool as
the admin API shows them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from lmaas.config import EngineConfig, PlacementConfig
from lmaas.controller.cluster.base import ModelRef
from lmaas.controller.deployment import Deployment
from lmaas.controller.pending import PENDING
from lmaas.controller.pool import Backend, ModelFacts, ResourcePool
from lmaas.controller.specs import DeploymentSpec
from lmaas.engine.replica import Replica
from lmaas.errors import LmaasError
from lmaas.protocol.deploy import (
    DeploymentOut,
    DeploymentState,
    PoolOut,
    ReplicaOut,
    ResourcesOut,
)
from lmaas.protocol.engine import ModelInfo
from lmaas.store.catalog import Catalog, VersionInfo

log = logging.getLogger(__name__)


def version_facts(engine: EngineConfig, version: VersionInfo) -> ModelFacts:
    backend: Backend
    if engine.backend != "auto":
        backend = engine.backend
    else:
        backend = "transformers" if version.format == "hf" else "llamacpp"
    return ModelFacts(
        backend=backend,
        file_bytes=version.size_bytes,
        shared_key=version.digest,
        memory_bytes=version.memory_bytes,
        kv_bytes_per_token=version.kv_bytes_per_token,
    )


def path_facts(engine: EngineConfig, path: Path) -> ModelFacts:
    """A model file (or folder) outside the store: its size is all that is known before it
    loads (blocking: walks a folder)."""
    if path.is_dir():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    else:
        size = path.stat().st_size
    return ModelFacts(
        backend=engine.backend_for(path), file_bytes=size, shared_key=str(path.resolve())
    )


def loaded_facts(model: ModelRef, info: ModelInfo | None) -> ModelFacts | None:
    """``model``'s facts with what a loaded replica of it measured (None: it measured nothing)."""
    if info is None or info.memory_bytes is None:
        return None
    return model.memory_facts().measured(info.memory_bytes, info.kv_bytes_per_token)


async def keep_measurement(
    catalog: Catalog, replica: Replica, model: ModelRef
) -> ModelFacts | None:
    """``model``'s facts as the ready ``replica`` measured them, kept with its store version
    (when they changed); None when it measured nothing."""
    facts = loaded_facts(model, replica.info)
    if facts is None:
        return None
    known = model.memory_facts()
    changed = (facts.memory_bytes, facts.kv_bytes_per_token) != (
        known.memory_bytes,
        known.kv_bytes_per_token,
    )
    if changed and model.model is not None and model.version is not None:
        try:
            await asyncio.to_thread(
                catalog.set_memory,
                model.model,
                model.version,
                memory_bytes=facts.memory_bytes or 0,
                kv_bytes_per_token=facts.kv_bytes_per_token,
            )
        except LmaasError as exc:  # the version went meanwhile
            log.info("%s: measurement not kept: %s", replica.label, exc.message)
    log.info(
        "%s: measured %d MiB of its own memory besides its KV cache",
        replica.label,
        (facts.memory_bytes or 0) >> 20,
    )
    return facts


def placement_of(placement_json: str | None) -> PlacementConfig | None:
    return None if placement_json is None else PlacementConfig.model_validate_json(placement_json)


def placement_json(placement: PlacementConfig | None) -> str | None:
    """How a spec keeps ``placement`` (an empty one is none)."""
    return None if placement is None or placement.empty else placement.model_dump_json()


def pool_out(pool: ResourcePool) -> PoolOut:
    used = pool.usage()
    cap = pool.capacity
    return PoolOut(
        node=cap.node,
        cores=cap.cores,
        cpu_threads=cap.cpu_threads,
        cpu_threads_used=used.cpu_threads,
        memory_bytes=cap.memory,
        memory_bytes_used=used.memory,
        replicas=used.replicas,
    )


def deployment_out(
    spec: DeploymentSpec,
    d: Deployment,
    model: str | None,
    follows: str | None,
    note: str | None,
) -> DeploymentOut:
    health = d.health()
    active = [r for r in health.replicas if r.state != "draining"]
    ready = sum(1 for r in active if r.state == "ready")
    desired = d.desired  # the spec's, or what the autoscaler decided last
    state: DeploymentState
    if d.rolling:
        state = "rolling"
    elif desired == 0:
        state = "stopped"
    elif ready >= desired:
        state = "ready"
    elif ready > 0:
        state = "degraded"
    elif any(r.state == "failed" for r in active):
        state = "failed"
    elif active and all(r.state == PENDING for r in active):
        state = "pending"
    else:
        state = "starting"
    errors = [d.last_error, note] + [r.last_error for r in active]
    need = d.need if d.pool is not None else None
    return DeploymentOut(
        name=spec.name,
        model=model,
        follows=follows,
        version=d.version,
        path=spec.path,
        replicas=desired,
        ready_replicas=ready,
        state=state,
        source=spec.source,
        created_at=spec.created_at,
        last_error=next((e for e in errors if e), None),
        replica_status=[
            ReplicaOut(
                id=r.id,
                index=r.index,
                node=r.node,
                state=r.state,
                version=r.version,
                restarts=r.restarts,
                outstanding=r.outstanding,
                last_error=r.last_error,
            )
            for r in health.replicas
        ],
        placement=placement_of(spec.placement_json),
        resources=None
        if need is None
        else ResourcesOut(
            cpu_threads=need.cpu_threads,
            memory_bytes=need.memory,
            shared_memory_bytes=need.shared_memory,
            measured=need.measured,
        ),
    )
