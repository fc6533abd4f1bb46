"""Job runners as Ray actors (``cluster.kind: ray`` with a PostgreSQL catalog).

The kinds in ``jobs.ray.kinds`` (batches and eval runs by default; fine-tuning and quantizing
when listed) are run by runner actors (:class:`lmaas.jobs.runner_host.RunnerHost`) that Ray
places on its nodes; the other kinds stay in the runner process beside the gateway
(:mod:`lmaas.jobs.supervisor`). Kinds asking for the same resources (``jobs.ray`` num_cpus,
memory, resources, with ``per_kind`` over them) share one actor. Each is supervised as the
local runner is:

- A run makes an actor (``max_restarts`` 0), waits for Ray to place it, names its runner after
  the node (``<ip>/<node id[:8]>-<12 hex>``, which the job's events show) and calls its
  ``run`` with a secret made for this run (sent through Ray). The gateway accepts that secret
  from any address while the run lasts, always for a job that runner holds (its lease): as
  the runner's token on the OpenAI endpoints (acting as that job's owner only), on the blob
  route for the blobs of its jobs' input files and source versions, on ``POST
  /internal/files`` and on ``POST /internal/versions``.
- When the actor dies (its node lost, ``ray.kill``) the ``run`` call fails, its secret is
  dropped, the actor is killed for good and a new one is made after a backoff, told the dead
  runner's id so that its leases end at once: its jobs resume (or fail after
  ``jobs.max_attempts``) exactly as after a ``kill -9`` of the local runner.
- The database must be reachable from every node: with SQLite (a file on the gateway's disk)
  :func:`ray_runners` keeps every kind in the local runner and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from lmaas.config import Settings
from lmaas.db import database_url
from lmaas.jobs.backoff import RestartBackoff
from lmaas.jobs.runner import RunnerConfig
from lmaas.jobs.runner_host import RunnerHost
from lmaas.raynodes import ray_error_text

log = logging.getLogger(__name__)

_STOP_GRACE: Final = 15.0
ACTOR_PREFIX: Final = "lmaas-job-runner-"


@dataclass(frozen=True, slots=True)
class RunnerGroup:
    """The kinds one runner actor runs and what it asks Ray for."""

    kinds: tuple[str, ...]
    num_cpus: float
    memory: int
    resources: tuple[tuple[str, float], ...]

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "max_restarts": 0}
        if self.memory:
            options["memory"] = self.memory
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


def runner_groups(settings: Settings) -> list[RunnerGroup]:
    """The runner actors ``settings.jobs.ray`` asks for: one per distinct request."""
    ray = settings.jobs.ray
    groups: dict[tuple[Any, ...], list[str]] = {}
    for kind in dict.fromkeys(ray.kinds):
        groups.setdefault(ray.demand(kind), []).append(kind)
    return [RunnerGroup(tuple(kinds), *demand) for demand, kinds in groups.items()]


def ray_runners(settings: Settings, cluster: object) -> RayRunners | None:
    """The Ray runners for ``cluster``, or ``None`` (every kind runs beside the gateway): not
    a Ray cluster, no kind asked for, or a catalog the nodes cannot reach (SQLite)."""
    api = getattr(cluster, "ray", None)
    if getattr(cluster, "kind", None) != "ray" or api is None or not settings.jobs.ray.kinds:
        return None
    url = settings.database_url or database_url(settings.home_dir)
    if not url.startswith("postgresql"):
        log.warning(
            "jobs run in the runner beside this gateway, not on the Ray cluster: runners on "
            "other nodes need the catalog by URL, and it is SQLite (a file on this machine); "
            "set LMAAS_DATABASE_URL to a PostgreSQL database every node reaches"
        )
        return None
    return RayRunners(settings, api, str(getattr(cluster, "gateway_url", "")), url)


@dataclass
class _Run:
    actor: Any
    secret: str
    runner_id: str | None = None
    node: str | None = None


class RayRunners:
    """The runner actors of one gateway (see the module doc)."""

    def __init__(self, settings: Settings, api: Any, gateway_url: str, db_url: str) -> None:
        self.settings = settings
        self.groups = runner_groups(settings)
        self.gateway_url = gateway_url
        self.restarts = 0
        self._db_url = db_url
        self._ray = api
        self._host_class = api.remote(RunnerHost)
        self._runs: dict[int, _Run] = {}  # by group index
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(k for g in self.groups for k in g.kinds)

    def nodes(self) -> dict[str, str | None]:
        """Each live runner's id and node."""
        return {str(r.runner_id): r.node for r in self._runs.values() if r.runner_id}

    def secret_ok(self, token: str) -> bool:
        """Whether ``token`` is the secret of a runner actor's current run."""
        given = token.encode()
        return any(hmac.compare_digest(given, r.secret.encode()) for r in self._runs.values())

    def runner_of(self, token: str) -> str | None:
        """The id of the runner whose current run has secret ``token`` (None: no such run, or
        not yet named)."""
        given = token.encode()
        for run in list(self._runs.values()):
            if hmac.compare_digest(given, run.secret.encode()):
                return run.runner_id
        return None

    async def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._supervise(i), name=f"supervise-ray-job-runner-{i}")
            for i in range(len(self.groups))
        ]

    def wake(self) -> None:
        for run in list(self._runs.values()):
            with contextlib.suppress(Exception):
                run.actor.wake.remote()

    def stop_soon(self) -> None:
        self._stopping = True
        for run in list(self._runs.values()):
            with contextlib.suppress(Exception):
                run.actor.stop.remote()

    async def stop(self) -> None:
        self.stop_soon()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=_STOP_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- one group's runner -----------------------------------------------------------------------

    async def _supervise(self, index: int) -> None:
        backoff, previous = RestartBackoff(), None
        while not self._stopping:
            started = time.monotonic()
            run = _Run(None, secrets.token_urlsafe(32))
            try:
                await self._run_once(index, run, previous)
            except Exception as exc:
                log.warning(
                    "job runner actor for %s ended: %s", self._name(index), ray_error_text(exc)
                )
            finally:
                self._runs.pop(index, None)
                if run.actor is not None:
                    await asyncio.to_thread(self._kill, run.actor)
            previous = run.runner_id or previous
            if self._stopping:
                break
            self.restarts += 1
            delay = backoff.after(started)
            log.warning("restarting the job runner actor for %s in %.1fs", self._name(index), delay)
            await asyncio.sleep(delay)

    async def _run_once(self, index: int, run: _Run, previous: str | None) -> None:
        group = self.groups[index]
        uid = uuid.uuid4().hex[:12]
        options = {**group.options(), "name": ACTOR_PREFIX + uid}
        run.actor = await asyncio.to_thread(lambda: self._host_class.options(**options).remote())
        self._runs[index] = run
        run.node = str(await _result(run.actor.node.remote()))
        run.runner_id = f"{run.node}-{uid}"
        config = RunnerConfig(
            runner_id=run.runner_id,
            database_url=self._db_url,
            home=self.settings.home_dir,
            gateway_url=self.gateway_url,
            release_runner=previous,
            jobs=self.settings.jobs,
            max_upload_bytes=self.settings.limits.max_upload_bytes,
            log_level=self.settings.log_level,
            kinds=list(group.kinds),
            node_cache_dir=self.settings.cluster.node_cache_dir,
            node_cache_max_bytes=self.settings.cluster.node_cache_max_bytes,
        )
        log.info("job runner %s (%s) placed on node %s", run.runner_id, self._name(index), run.node)
        await _result(run.actor.run.remote(config.model_dump_json(), run.secret))
        if not self._stopping:
            raise RuntimeError("its run returned")

    def _name(self, index: int) -> str:
        return ", ".join(self.groups[index].kinds)

    def _kill(self, actor: Any) -> None:
        with contextlib.suppress(Exception):  # already gone
            self._ray.kill(actor, no_restart=True)


async def _result(ref: Any) -> Any:
    return await ref
