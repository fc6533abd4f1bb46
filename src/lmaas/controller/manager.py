"""The deployment manager: desired state (deployment specs in SQL) made real as replicas of a
``Cluster`` (the kind ``cluster.kind`` names).

At start it reconciles the config file's deployments into the spec table, then brings up every
spec. While serving, the admin API creates, scales, re-points and deletes deployments, and a
moved alias rolls every deployment that follows it. Everything the request path asks of it
(which deployment serves ``name:alias``, which version a deployment serves) is answered from
memory; the catalog is read off the event loop when deployments or aliases change.

Replicas are placed against the cluster's capacity (``controller/pool.py``): an API request
that does not fit is refused with a 409 saying what is missing; what cannot be refused (the
config file's deployments, a followed alias that moved) waits, as pending replicas or a rolling
update not started, until replicas elsewhere stop. What a loaded replica measured is kept with
its store version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmaas.config import AutoscalingConfig, EngineConfig, ModelConfig, Settings
from lmaas.controller.autoscaler import Autoscaler
from lmaas.controller.capacity import ClusterPool
from lmaas.controller.cluster.base import Cluster, ClusterKinds, ModelFile, ModelRef
from lmaas.controller.cluster.kinds import installed_kinds
from lmaas.controller.deployment import Deployment
from lmaas.controller.pool import ModelFacts, ResourcePool
from lmaas.controller.resources import (
    deployment_out,
    keep_measurement,
    path_facts,
    placement_json,
    placement_of,
    pool_out,
    version_facts,
)
from lmaas.controller.specs import DeploymentSpec, DeploymentStore
from lmaas.engine.directory import EngineDirectory
from lmaas.engine.replica import Replica
from lmaas.errors import (
    ConflictError,
    InvalidRequestError,
    LmaasError,
    NotFoundError,
    ServiceUnavailableError,
)
from lmaas.protocol.deploy import (
    DeploymentCreate,
    DeploymentOut,
    DeploymentPatch,
    PoolOut,
)
from lmaas.store.catalog import VersionInfo, parse_reference
from lmaas.store.model_store import ModelStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Resolved:
    ref: ModelRef
    model: str | None  # the store model, or None for a file outside the store
    follows: str | None  # the alias followed; None when pinned to a number or a path
    aliases: dict[str, int]  # the store model's aliases (alias -> version) when it was read


@dataclass(slots=True)
class _Entry:
    spec: DeploymentSpec
    deployment: Deployment
    model: str | None
    follows: str | None
    note: str | None = None  # e.g. the followed alias was deleted
    roll_waits: bool = False  # a followed alias moved, and the rolling update waits for room


class DeploymentManager:
    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        specs: DeploymentStore,
        *,
        cluster: Cluster | None = None,
        kinds: ClusterKinds | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.specs = specs
        self.engines = EngineDirectory(resolver=self.resolve, version_of=self.version_of)
        self._cluster = cluster
        self._kinds = kinds
        self._entries: dict[str, _Entry] = {}
        # Per served store model: alias -> version number, so `name:alias` resolves in memory.
        self._aliases: dict[str, dict[str, int]] = {}
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._pools = ClusterPool(
            lambda: self.cluster, settings.cluster.capacity_refresh_s, self._room_freed
        )
        self._measured: dict[str, ModelFacts] = {}  # what loaded replicas measured, by model
        self._placing: asyncio.Task[None] | None = None
        self._place_again = False
        self._closing = False
        self.autoscaler = Autoscaler(settings.autoscaler)

    @property
    def pool(self) -> ResourcePool | None:
        """Where replicas are placed against the cluster's capacity (read again on a timer,
        ``controller/capacity.py``); None when the cluster reports none."""
        return self._pools.pool

    @property
    def cluster(self) -> Cluster:
        """The cluster replicas run on, made on first use from ``cluster.kind`` (an unknown
        kind raises ``InvalidRequestError``, which ``check_config`` reports before start)."""
        if self._cluster is None:
            kinds = self._kinds or installed_kinds()
            self._cluster = kinds.create(self.settings, self.store)
        return self._cluster

    # -- start and stop ----------------------------------------------------------------------------

    def config_specs(self) -> list[DeploymentSpec]:
        """The config file's deployments as specs."""
        return [
            DeploymentSpec(
                name=m.name,
                reference=None if m.path is not None else (m.model or m.name),
                path=str(m.path) if m.path is not None else None,
                replicas=m.autoscaling.start_replicas if m.autoscaling else m.replicas,
                engine_json=m.engine.model_dump_json(),
                source="config",
                autoscaling_json=m.autoscaling.model_dump_json() if m.autoscaling else None,
                placement_json=placement_json(m.placement),
            )
            for m in self.settings.models
        ]

    def check_config(self) -> None:
        """Raise a clear error when a configured deployment cannot be served (before start)."""
        cluster = self.cluster  # an unknown cluster kind is the first thing to report
        for spec in self.config_specs():
            cluster.check(self.resolve_spec(spec).ref)

    def reconcile_config(self) -> list[DeploymentSpec]:
        """Write the config file's deployments over the stored ones and drop config
        deployments the file no longer declares; returns every spec to run."""
        declared = self.config_specs()
        names = {s.name for s in declared}
        for spec in declared:
            self.specs.put(spec)
        for spec in self.specs.list():
            if spec.source == "config" and spec.name not in names:
                log.info("deployment %s is no longer in the config file: removed", spec.name)
                self.specs.delete(spec.name)
        return self.specs.list()

    async def start(self) -> None:
        specs = await asyncio.to_thread(self.reconcile_config)
        async with self._lock:
            for spec in specs:
                try:
                    entry = await self._launch(spec)
                except LmaasError as exc:
                    log.error("deployment %s cannot start: %s", spec.name, exc.message)
                    continue
                pending = entry.deployment.pending
                if pending:
                    log.warning(
                        "deployment %s: %d of %d replicas pending, %s",
                        spec.name,
                        len(pending),
                        spec.replicas,
                        pending[0].last_error,
                    )
        self.autoscaler.start()
        self._pools.start()

    async def close(self) -> None:
        self._closing = True
        await self.autoscaler.close()
        await self._pools.close()
        for task in list(self._background):
            task.cancel()
        entries = list(self._entries.values())
        self._entries.clear()
        self.engines.clear()
        await asyncio.gather(*(e.deployment.close() for e in entries))
        await self.cluster.close()

    # -- resolution --------------------------------------------------------------------------------

    def resolve_spec(self, spec: DeploymentSpec) -> Resolved:
        """What ``spec`` serves now (blocking: reads the catalog and a folder's manifest)."""
        engine = EngineConfig.model_validate_json(spec.engine_json)
        placement = placement_of(spec.placement_json)
        if spec.path is not None:
            config = ModelConfig(name=spec.name, path=Path(spec.path), engine=engine)
            path = config.resolve_path()
            if not path.exists():
                raise NotFoundError(f"{spec.path} does not exist", param="path")
            facts = path_facts(engine, path)
            outside = ModelRef(spec.name, engine, path=str(path), facts=facts, placement=placement)
            return Resolved(outside, None, None, {})
        model, ref = parse_reference(spec.reference or spec.name)
        version = self.store.catalog.get_version(model, ref)  # gguf or hf: both are served
        aliases = dict(self.store.catalog.get_model(model).aliases)
        served = ModelRef(
            spec.name,
            engine,
            model=model,
            version=version.number,
            format=version.format,
            digest=version.digest,
            files=self._files(version),
            facts=version_facts(engine, version),
            placement=placement,
        )
        return Resolved(served, model, ref if isinstance(ref, str) else None, aliases)

    def _files(self, version: VersionInfo) -> tuple[ModelFile, ...]:
        if version.format == "hf":
            files = self.store.folder_files(version)
            return tuple(ModelFile(f.path, f.digest, f.size) for f in files)
        return (ModelFile("model.gguf", version.digest, version.size_bytes),)

    async def _resolve(self, spec: DeploymentSpec) -> Resolved:
        resolved = await asyncio.to_thread(self.resolve_spec, spec)
        self.cluster.check(resolved.ref)
        return resolved

    def _read_aliases(self, model: str) -> dict[str, int]:
        try:
            return dict(self.store.catalog.get_model(model).aliases)
        except NotFoundError:
            return {}

    def resolve(self, requested: str) -> str | None:
        """The deployment that serves ``requested`` when it is not a deployment name:
        ``model``, ``model:alias`` or ``model:3`` of the store.

        Runs on the request path, so it reads only memory: the deployments, and the aliases of
        each served store model as they were last read (at deploy time and after every change
        through ``on_aliases_changed``).
        """
        try:
            model, ref = parse_reference(requested)
        except LmaasError:
            return None
        mine = sorted(
            (e for e in self._entries.values() if e.model == model), key=lambda e: e.spec.name
        )
        for e in mine:
            if e.follows == ref or e.deployment.version == ref:
                return e.spec.name
        number = self._aliases.get(model, {}).get(ref) if isinstance(ref, str) else None
        if number is None:
            return None
        return next((e.spec.name for e in mine if e.deployment.version == number), None)

    def version_of(self, name: str) -> int | None:
        entry = self._entries.get(name)
        return entry.deployment.version if entry is not None else None

    def served_versions(self) -> set[tuple[str, int]]:
        served: set[tuple[str, int]] = set()
        for e in self._entries.values():
            if e.model is None:
                continue
            if e.deployment.version is not None:
                served.add((e.model, e.deployment.version))
            for r in e.deployment.health().replicas:
                if r.version is not None:
                    served.add((e.model, r.version))
        return served

    # -- the admin API -----------------------------------------------------------------------------

    def list(self) -> list[DeploymentOut]:
        return [self._out(e) for _, e in sorted(self._entries.items())]

    def get(self, name: str) -> DeploymentOut:
        return self._out(self._entry(name))

    async def create(self, body: DeploymentCreate) -> DeploymentOut:
        try:
            default_name = parse_reference(body.model)[0]
        except LmaasError as exc:
            raise InvalidRequestError(exc.message, param="model") from exc
        name = body.name or default_name
        auto = body.autoscaling
        if auto is not None and "replicas" in body.model_fields_set:
            raise InvalidRequestError(
                "give either replicas or autoscaling (its initial_replicas, min_replicas and "
                "max_replicas), not both",
                param="replicas",
            )
        spec = DeploymentSpec(
            name=name,
            reference=body.model,
            path=None,
            replicas=auto.start_replicas if auto is not None else body.replicas,
            engine_json=(body.engine or EngineConfig()).model_dump_json(),
            source="api",
            autoscaling_json=auto.model_dump_json() if auto is not None else None,
            placement_json=placement_json(body.placement),
        )
        async with self._lock:
            if name in self._entries:
                raise ConflictError(f"deployment {name!r} already exists", param="name")
            resolved = await self._resolve(spec)  # unknown model: 404 before any write
            deployment = self._deployment(resolved.ref, spec.replicas)
            _refuse(
                await self._room(deployment, spec.replicas),
                f"cannot start {spec.replicas} replicas of {name!r}",
            )
            spec = await asyncio.to_thread(self.specs.create, spec)
            entry = await self._launch(spec, resolved, deployment)
        if body.wait:
            await entry.deployment.wait_ready(self.settings.worker_start_timeout)
        return self._out(entry)

    async def update(self, name: str, body: DeploymentPatch) -> DeploymentOut:
        entry = self._entry(name)
        rescaled = "autoscaling" in body.model_fields_set
        if body.replicas is not None and (
            body.autoscaling is not None or (self.autoscaler.tracks(name) and not rescaled)
        ):
            raise InvalidRequestError(
                f"deployment {name!r} is autoscaled: change its autoscaling bounds, or set "
                "autoscaling to null to set replicas by hand",
                param="replicas",
            )
        if body.replicas is not None and body.replicas > entry.spec.replicas:
            more = body.replicas - len(entry.deployment.placed)  # pending ones included
            _refuse(
                await self._room(entry.deployment, more),
                f"cannot scale {name!r} to {body.replicas} replicas ({more} more to start)",
            )
        placing = "placement" in body.model_fields_set
        placement = placement_json(body.placement) if placing else entry.spec.placement_json
        if body.model is not None or placement != entry.spec.placement_json:
            candidate = dataclasses.replace(
                entry.spec, reference=body.model or entry.spec.reference, placement_json=placement
            )
            if body.model is not None:
                candidate = dataclasses.replace(candidate, path=None)
            resolved = await self._resolve(candidate)  # a placement the cluster refuses: 400
            if resolved.model != entry.model and entry.model is not None:
                raise InvalidRequestError(
                    f"deployment {name!r} serves {entry.model}; deploy {resolved.model} "
                    "under its own name instead",
                    param="model",
                )
            moved = resolved.ref.version != entry.deployment.version
            moved |= placement != entry.spec.placement_json  # replicas move to other nodes
            if moved:
                _refuse(
                    entry.deployment.roll_fits(resolved.ref),
                    f"cannot roll {name!r} to {resolved.ref.describe()}",
                    param="model" if body.model is not None else "placement",
                )
            entry.spec = await asyncio.to_thread(
                self.specs.update, name, reference=body.model, placement_json=placement
            )
            entry.model, entry.follows, entry.note = resolved.model, resolved.follows, None
            self._remember_aliases(resolved)
            if moved and not await entry.deployment.roll(resolved.ref):
                raise ServiceUnavailableError(
                    entry.deployment.last_error or "rolling update failed"
                )
        if rescaled:
            await self._set_autoscaling(entry, body.autoscaling)
        if body.replicas is not None:
            entry.spec = await asyncio.to_thread(self.specs.update, name, replicas=body.replicas)
            await entry.deployment.scale(body.replicas)
        if body.wait:
            await entry.deployment.wait_ready(self.settings.worker_start_timeout)
        return self._out(entry)

    async def delete(self, name: str) -> None:
        async with self._lock:
            entry = self._entry(name)
            await asyncio.to_thread(self.specs.delete, name)
            self.autoscaler.untrack(name)
            del self._entries[name]
            self.engines.pop(name, None)
            if not any(e.model == entry.model for e in self._entries.values()):
                self._aliases.pop(entry.model or "", None)
        # In-flight requests finish; new ones get a 404 from now on.
        self._in_background(entry.deployment.drain_and_close(), f"undeploy-{name}")

    async def on_aliases_changed(self, model: str) -> None:
        """Re-read ``model``'s aliases (when it is served) and roll every deployment that
        follows an alias of it that now points elsewhere."""
        entries = [e for e in self._entries.values() if e.model == model]
        if not entries:
            return
        self._aliases[model] = await asyncio.to_thread(self._read_aliases, model)
        for entry in entries:
            if entry.follows is not None:
                self._in_background(self._follow(entry), f"follow-{entry.spec.name}")

    async def _follow(self, entry: _Entry) -> None:
        """Roll ``entry`` to the version its alias names now, if that changed."""
        try:
            resolved = await asyncio.to_thread(self.resolve_spec, entry.spec)
        except NotFoundError:
            entry.note = (
                f"alias {entry.follows!r} of {entry.model} no longer exists; "
                f"still serving version {entry.deployment.version}"
            )
            return
        entry.note = None
        entry.roll_waits = False
        self._remember_aliases(resolved)
        if resolved.ref.version == entry.deployment.version:
            return
        short = entry.deployment.roll_fits(resolved.ref)
        if short is not None:  # tried again when replicas stop (_place_waiting)
            entry.roll_waits = True
            entry.note = (
                f"{entry.model}:{entry.follows} moved to version {resolved.ref.version}; the "
                f"rolling update waits: {short}; still serving version {entry.deployment.version}"
            )
            log.warning("%s: %s", entry.spec.name, entry.note)
            return
        log.info(
            "%s: %s:%s moved to version %s; rolling",
            entry.spec.name,
            entry.model,
            entry.follows,
            resolved.ref.version,
        )
        await entry.deployment.roll(resolved.ref)

    # -- helpers -----------------------------------------------------------------------------------

    def _deployment(self, ref: ModelRef, replicas: int) -> Deployment:
        return Deployment(
            ref,
            replicas,
            cluster=self.cluster,
            settings=self.settings,
            pool=self.pool,
            on_loaded=self._loaded,
            measured=self._measured,
        )

    async def _launch(
        self,
        spec: DeploymentSpec,
        resolved: Resolved | None = None,
        deployment: Deployment | None = None,
    ) -> _Entry:
        if resolved is None:
            resolved = await self._resolve(spec)
        deployment = deployment or self._deployment(resolved.ref, spec.replicas)
        entry = _Entry(spec, deployment, resolved.model, resolved.follows)
        await deployment.start()
        self._remember_aliases(resolved)
        self._entries[spec.name] = entry
        self.engines[spec.name] = deployment.engine
        if spec.autoscaling_json is not None:
            config = AutoscalingConfig.model_validate_json(spec.autoscaling_json)
            self.autoscaler.track(spec.name, deployment, config)
        return entry

    async def _set_autoscaling(self, entry: _Entry, config: AutoscalingConfig | None) -> None:
        """Autoscale ``entry`` by ``config`` from now on (its bounds apply at the next tick),
        or (None) stop autoscaling it and keep the replicas it has."""
        name = entry.spec.name
        if config is None:
            self.autoscaler.untrack(name)
            replicas = len(entry.deployment.replicas)
        else:
            self.autoscaler.track(name, entry.deployment, config)
            replicas = config.start_replicas
        entry.spec = await asyncio.to_thread(
            self.specs.update,
            name,
            replicas=replicas,
            autoscaling_json=config.model_dump_json() if config is not None else None,
        )

    async def _room(self, deployment: Deployment, count: int) -> str | None:
        """Why ``count`` more replicas of ``deployment`` do not fit; a no is checked against
        the cluster's capacity of now (a node may have joined since the last reading)."""
        if deployment.fits(count) is None:
            return None
        await self._pools.refresh()
        return deployment.fits(count)

    def _remember_aliases(self, resolved: Resolved) -> None:
        if resolved.model is not None:
            self._aliases[resolved.model] = resolved.aliases

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            available = ", ".join(sorted(self._entries)) or "none"
            raise NotFoundError(f"no deployment {name!r}; deployments: {available}", param="name")
        return entry

    def _in_background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    def pool_usage(self) -> PoolOut | None:
        return pool_out(self.pool) if self.pool is not None else None

    def collectors(self) -> Sequence[Any]:
        return self.autoscaler.collectors()

    def _out(self, entry: _Entry) -> DeploymentOut:
        out = deployment_out(entry.spec, entry.deployment, entry.model, entry.follows, entry.note)
        out.autoscaling = self.autoscaler.status(entry.spec.name)
        return out

    # -- room: measurements, and what waits for it ---------------------------------------------

    async def _loaded(
        self, deployment: Deployment, replica: Replica, model: ModelRef
    ) -> ModelFacts | None:
        """A replica of ``model`` is ready: keep what it measured with the store version."""
        return await keep_measurement(self.store.catalog, replica, model)

    def _room_freed(self) -> None:
        """A replica stopped: place what waits for room (once per burst of stops)."""
        if self._closing:
            return
        if self._placing is not None and not self._placing.done():
            self._place_again = True
            return
        self._placing = asyncio.get_running_loop().create_task(self._place_waiting())
        self._background.add(self._placing)
        self._placing.add_done_callback(self._done)

    async def _place_waiting(self) -> None:
        self._place_again = True
        while self._place_again and not self._closing:
            self._place_again = False
            for _, entry in sorted(self._entries.items()):
                if entry.roll_waits:
                    await self._follow(entry)
                if entry.deployment.pending:
                    await entry.deployment.place_pending()


def _refuse(short: str | None, what: str, *, param: str = "replicas") -> None:
    """Refuse a request the resource pool has no room for (409, saying what is missing)."""
    if short is not None:
        raise ConflictError(f"{what}: {short}", param=param, code="insufficient_resources")
