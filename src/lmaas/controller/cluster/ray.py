"""The ``ray`` cluster kind: every replica is a Ray actor on some node of a Ray cluster, running
the same worker as a local replica and speaking the same framed protocol to this gateway.

- **Placement.** A replica run is a ``ReplicaHost`` actor (:mod:`.ray_host`) asking Ray for
  ``num_cpus`` (its CPU threads over ``cluster.cpu_overcommit``, as the local pool counts them),
  ``memory`` (what the resource pool says one replica takes, its mapped weights included), the
  ``cluster.ray_resources`` and ``cluster.ray_label_selector`` with the deployment's own
  ``placement`` over them (its keys win). A deployment's replicas go to different nodes when
  they can: each actor prefers the node with the fewest replicas of its deployment, softly
  (:mod:`.ray_spread`), else Ray's ``SPREAD``. Ray picks the node; a replica Ray cannot place
  yet stays ``starting`` with a note saying what it waits for.
- **Model files.** No shared disk: the actor fetches the version's blobs by sha256 from this
  gateway's ``GET /internal/blobs/<hex>`` (a token made at start, given only to the actors; only
  blobs of models this cluster serves) into the node's cache, each checked against its digest.
- **The channel.** The actor listens on a TCP port of its node; the gateway connects and sends
  the run's secret, then the actor starts ``python -m lmaas.worker`` on that connection. From
  there on the replica is a ``SupervisedReplica`` like a local one: the router, admission,
  metrics and request records see no difference.
- **Failure.** The actor's ``serve`` call ends when the worker exits and fails when the actor
  dies (its node lost, or killed); the connection closing and missed health pings say the same.
  Either way the run ends, its in-flight requests fail with a 503 (the router retries those that
  had produced nothing on another replica), the actor is killed for good, and the supervisor
  makes a new actor after its backoff, which Ray places on a node that is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import secrets
from pathlib import Path
from typing import Any

from lmaas.config import Settings
from lmaas.controller.cluster.base import ModelRef
from lmaas.controller.cluster.ray_host import HostSpec, ReplicaHost
from lmaas.controller.cluster.ray_spread import Spreader
from lmaas.controller.cluster.supervised import STREAM_LIMIT, SupervisedReplica
from lmaas.controller.pool import Capacity, replica_need, size
from lmaas.errors import InvalidRequestError
from lmaas.raynodes import ray_error_text
from lmaas.store.folder import FolderFile
from lmaas.store.model_store import ModelStore

log = logging.getLogger(__name__)

# How long a graceful stop waits for the worker to exit before the actor is killed.
_EXIT_GRACE = 5.0
# After this long without a node, a starting replica says what it waits for.
_PLACEMENT_NOTE_AFTER = 5.0
# How long the gateway may take to reach a placed actor's port.
_CONNECT_TIMEOUT = 30.0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise InvalidRequestError(
            "cluster.kind 'ray' needs the ray package: pip install 'lmaas[ray]'",
            param="cluster.kind",
        ) from exc
    return ray


def ray_cpus(threads: int, overcommit: float) -> float:
    """The CPUs a replica of ``threads`` threads asks Ray for: as many cores as the local pool
    would count (threads over the overcommit), to Ray's precision of 1/10000."""
    return max(0.0001, round(threads / overcommit, 4))


class RayCluster:
    """Replicas as Ray actors (see the module doc); also the blob source of its actors."""

    kind = "ray"

    def __init__(self, settings: Settings, store: ModelStore | None, *, api: Any = None) -> None:
        """``api``: the ``ray`` module (a stand-in in tests); imported when not given."""
        self.settings = settings
        self.store = store
        self.token = secrets.token_urlsafe(32)
        self._served: set[str] = set()  # hex digests of the blobs replicas may fetch
        self._ray = api if api is not None else _import_ray()
        cluster = settings.cluster
        try:
            self._ray.init(
                address=cluster.ray_address,
                namespace=cluster.ray_namespace,
                ignore_reinit_error=True,
                logging_level=logging.WARNING,
            )
        except Exception as exc:  # no cluster there, a version mismatch...
            raise InvalidRequestError(
                f"cannot join the Ray cluster at {cluster.ray_address or 'auto'}: {exc}",
                param="cluster.ray_address",
            ) from exc
        self._host_class = self._ray.remote(ReplicaHost)
        self.spreader = Spreader()
        self.gateway_url = cluster.gateway_url or default_gateway_url(
            settings, self._ray.util.get_node_ip_address()
        )
        log.info("replicas run on the Ray cluster at %s", cluster.ray_address or "auto")

    @property
    def ray(self) -> Any:
        """The ``ray`` module this gateway joined the cluster with (the job runners' actors
        are made with it too, :mod:`lmaas.jobs.ray_runners`)."""
        return self._ray

    # -- Cluster --------------------------------------------------------------------------------

    def check(self, model: ModelRef) -> None:
        if model.path is not None or model.digest is None:
            raise InvalidRequestError(
                f"{model.describe()} is a file on this machine; a Ray cluster's nodes fetch "
                "models from the store by digest: push it first (`lmaas models push`)",
                param="model",
            )
        if self.store is None:
            raise InvalidRequestError("a Ray cluster needs the model store", param="model")

    def capacity(self) -> Capacity:
        """The cluster as the resource pool counts it: every live node's CPUs and memory
        together (read again as nodes join and leave, ``controller/capacity.py``). Ray places
        each replica on one node; the pool refuses what the whole cluster lacks."""
        resources = self._ray.cluster_resources()
        cpus = self._node_cpus()
        return Capacity(
            node=f"ray ({len(cpus)} node{'s' if len(cpus) != 1 else ''})",
            cores=max(1, int(resources.get("CPU", 1))),
            memory_total=int(resources.get("memory", 0)),
            cpu_overcommit=self.settings.cluster.cpu_overcommit,
            node_cores=max(1, int(max(cpus, default=1))),
        )

    def new_replica(self, model: ModelRef, *, index: int) -> RayReplica:
        self._served.update(f.digest.removeprefix("sha256:") for f in model.files)
        return RayReplica(
            model,
            index,
            cluster=self,
            start_timeout=self.settings.worker_start_timeout,
            health_interval=self.settings.health_interval,
            backoff_max=self.settings.restart_backoff_max,
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._ray.shutdown)

    # -- the blob route's source ----------------------------------------------------------------

    def token_ok(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.token.encode())

    def blob_path(self, hexdigest: str) -> Path | None:
        """The stored blob ``hexdigest`` when a replica of this cluster serves it."""
        if hexdigest not in self._served or self.store is None:
            return None
        path = self.store.blobs.path_for(hexdigest)
        return path if path.is_file() else None

    # -- actors ---------------------------------------------------------------------------------

    def demand(self, model: ModelRef) -> dict[str, Any]:
        """The Ray options of one replica's actor (blocking: asks Ray for its nodes)."""
        cluster = self.settings.cluster
        engine = model.engine
        threads = engine.threads or self._largest_node_cpus()
        need = replica_need(engine, model.memory_facts(), threads)
        options: dict[str, Any] = {
            "num_cpus": ray_cpus(threads, cluster.cpu_overcommit),
            "memory": need.memory + need.shared_memory,
            "max_restarts": 0,  # the replica makes a new actor itself, after its backoff
            "scheduling_strategy": "SPREAD",
        }
        placement = model.placement
        resources = {**cluster.ray_resources, **(placement.resources if placement else {})}
        labels = {**cluster.ray_label_selector, **(placement.label_selector if placement else {})}
        if resources:
            options["resources"] = resources
        if labels:
            options["label_selector"] = labels
        return options

    def _node_cpus(self) -> list[float]:
        """The CPUs of every live node."""
        return [n.get("Resources", {}).get("CPU", 0) for n in self._ray.nodes() if n.get("Alive")]

    def _largest_node_cpus(self) -> int:
        return max(1, int(max(self._node_cpus(), default=1)))

    def spawn(self, model: ModelRef, replica: str = "") -> tuple[Any, dict[str, Any]]:
        """A new actor for one run of the replica ``replica`` of ``model``, and the options it
        asked for (blocking)."""
        spec = HostSpec(
            name=model.name,
            engine_json=model.engine.model_dump_json(),
            format=model.format,
            digest=str(model.digest),
            files=tuple(FolderFile(f.path, f.digest, f.size) for f in model.files),
            gateway_url=self.gateway_url,
            token=self.token,
            cache_dir=self.settings.cluster.node_cache_dir,
            cache_max_bytes=self.settings.cluster.node_cache_max_bytes,
            accept_timeout=self.settings.worker_start_timeout,
        )
        options = self.demand(model)
        node = self.spreader.choose(self._ray.nodes(), options, model.name, replica)
        if node is not None:  # preferred, not required: elsewhere when that node is busy
            strategies = self._ray.util.scheduling_strategies
            options["scheduling_strategy"] = strategies.NodeAffinitySchedulingStrategy(
                node_id=node, soft=True, _spill_on_unavailable=True
            )
        return self._host_class.options(**options).remote(spec), options

    def kill(self, actor: Any) -> None:
        with contextlib.suppress(Exception):  # already gone
            self._ray.kill(actor, no_restart=True)


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_gateway_url(settings: Settings, node_ip: str) -> str:
    """This gateway's URL as cluster nodes reach it: its host (the Ray node address when it
    binds every interface) and port."""
    if settings.port == 0:
        raise InvalidRequestError(
            "with a Ray cluster, set cluster.gateway_url (nodes fetch model blobs from this "
            "gateway, whose port 0 is only chosen at start) or a fixed --port",
            param="cluster.gateway_url",
        )
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = node_ip
    elif _loopback(host) and not _loopback(node_ip):
        log.warning(
            "this gateway listens on %s only: Ray nodes on other machines cannot fetch model "
            "blobs from it (bind to a reachable address or set cluster.gateway_url)",
            host,
        )
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if settings.ssl_certfile is not None else "http"
    return f"{scheme}://{host}:{settings.port}"


class RayReplica(SupervisedReplica):
    """A replica whose runs are actors of ``cluster`` (see the module doc)."""

    def __init__(
        self,
        model: ModelRef,
        index: int,
        *,
        cluster: RayCluster,
        start_timeout: float,
        health_interval: float,
        backoff_max: float,
    ) -> None:
        super().__init__(
            model,
            index,
            node="",  # until Ray places it
            start_timeout=start_timeout,
            health_interval=health_interval,
            backoff_max=backoff_max,
        )
        self._cluster = cluster
        self._actor: Any = None
        self._serving: asyncio.Future[Any] | None = None  # the actor's serve() call

    async def _run_once(self) -> None:
        self.state = "starting"
        self.node = ""
        self._actor, options = await asyncio.to_thread(self._cluster.spawn, self.model, self.id)
        placed = await self._placed(self._actor.prepare.remote(), options)
        self.node = str(placed["node"])
        self._cluster.spreader.placed(self.model.name, self.id, self.node)
        secret = secrets.token_bytes(32)
        # One task awaits the call; the watch and a graceful stop wait on it without owning it.
        self._serving = asyncio.ensure_future(_result(self._actor.serve.remote(secret)))
        gone = asyncio.ensure_future(_end_of(self._serving, self.node))
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(placed["ip"], placed["port"], limit=STREAM_LIMIT),
                _CONNECT_TIMEOUT,
            )
            writer.write(secret)
            channel = await self._connect(reader, writer, gone, f"node {self.node}")
            await self._watch(channel, gone)
        finally:
            gone.cancel()

    async def _placed(self, prepared: Any, options: dict[str, Any]) -> dict[str, Any]:
        """The actor's address once Ray placed it and it has the model; says meanwhile what
        it waits for."""
        waiting = asyncio.ensure_future(_result(prepared))
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=_PLACEMENT_NOTE_AFTER)
                if done:
                    break
                self.last_error = f"waiting for Ray to place it on a node {_wanted(options)}"
            try:
                return dict(waiting.result())
            except Exception as exc:
                raise RuntimeError(f"the replica's actor failed: {ray_error_text(exc)}") from exc
        finally:
            waiting.cancel()

    async def stop(self, *, now: bool = False) -> None:
        self._stopping = True
        if self.channel is not None:
            self.channel.shutdown()
        serving = self._serving
        if serving is not None and not now:  # the worker was asked to exit: give it a moment
            await asyncio.wait({serving}, timeout=_EXIT_GRACE)
        await self._end_supervision()  # the supervisor's last reap kills the actor

    async def _reap(self) -> None:
        actor, self._actor = self._actor, None
        serving, self._serving = self._serving, None
        self._cluster.spreader.forget(self.model.name, self.id)
        if actor is not None:
            await asyncio.to_thread(self._cluster.kill, actor)
        if serving is not None:
            serving.cancel()
        self._drop_channel()


def _wanted(options: dict[str, Any]) -> str:
    """What a node must have free for the actor of ``options``, as a phrase."""
    free = [f"{options['num_cpus']:g} CPU", f"{size(options['memory'])} memory"]
    free += [f"{v:g} {k}" for k, v in options.get("resources", {}).items()]
    text = f"with {', '.join(free[:-1])} and {free[-1]} free"
    labels = options.get("label_selector")
    if labels:
        text += f", labelled {', '.join(f'{k}={v}' for k, v in labels.items())}"
    return text + ", or for the node to fetch the model"


async def _result(ref: Any) -> Any:
    return await ref


async def _end_of(serving: asyncio.Future[Any], node: str) -> str:
    """A sentence once the actor's ``serve`` call has ended: the worker exited, or the actor
    (or its node) is gone."""
    try:
        code = await asyncio.shield(serving)
    except Exception as exc:
        return f"the replica's actor on {node} is gone: {ray_error_text(exc)}"
    return f"worker on {node} exited with code {code}"
