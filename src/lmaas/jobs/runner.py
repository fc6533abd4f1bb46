"""`python -m lmaas.jobs.runner`: the job runner process a gateway starts beside itself.

It works outside the gateway's event loop: it claims jobs from the catalog database, runs
them (:mod:`lmaas.jobs.loop`) and sends their text work to the gateway's own HTTP API on
loopback. Its settings come in :data:`~lmaas.protocol.jobs.RUNNER_CONFIG_ENV` (JSON) and
the gateway's token in :data:`~lmaas.protocol.jobs.RUNNER_TOKEN_ENV`, which is removed from
the environment once read. ``--parent-fd`` is the read end of a pipe the gateway holds: a
byte on it means a job was queued, its end means the gateway is gone and the runner stops.
SIGTERM stops it too: running jobs are let go at once, to be resumed by the next runner.

A runner on a Ray node (:mod:`lmaas.jobs.runner_host`) runs :func:`run_jobs` inside its actor
with a ``node_cache_dir``: it shares no disk with the gateway, so its files and model versions
go through the gateway (:class:`lmaas.jobs.storage.GatewayJobFiles`), its work directories are
under the node cache's ``jobs``, and it runs the kinds it is given (``config.kinds``). Each
job's source model versions stay pinned in the node cache while that job's run goes on, and no
longer: however the run ends (done, failed, cancelled, its lease lost) its pins go
(:func:`pins_per_job`), so a runner that is never idle does not keep every version it fetched.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session, sessionmaker

from lmaas.config_jobs import JobSettings
from lmaas.db import create_db_engine, session_factory
from lmaas.jobs.context import JobContext, JobHandler, Outcome
from lmaas.jobs.gateway import GatewayClient
from lmaas.jobs.kinds import job_handlers
from lmaas.jobs.leases import JobLeases
from lmaas.jobs.loop import JobLoop, heartbeat_interval
from lmaas.jobs.storage import GatewayJobFiles, JobFiles, LocalJobFiles, catalog_lookup
from lmaas.protocol.jobs import RUNNER_CONFIG_ENV, RUNNER_TOKEN_ENV
from lmaas.store.blobs import BlobStore
from lmaas.store.catalog import Catalog
from lmaas.store.evaluations import Evaluations
from lmaas.store.files import FileLimits, FileStore
from lmaas.store.model_store import ModelStore
from lmaas.store.node_cache import NodeCache, Source
from lmaas.telemetry.logging import setup_logging

log = logging.getLogger(__name__)

# A line may wait for a busy engine; connect and pool waits are short.
_LINE_TIMEOUT = httpx.Timeout(connect=10.0, read=3600.0, write=60.0, pool=3600.0)


class RunnerConfig(BaseModel):
    """What the gateway tells its runner."""

    model_config = ConfigDict(extra="forbid")

    runner_id: str
    database_url: str
    home: Path
    gateway_url: str
    verify_tls: bool = True
    release_runner: str | None = None  # a runner that exited: its leases end now
    jobs: JobSettings
    max_upload_bytes: int
    log_level: str = "info"
    kinds: list[str] | None = None  # the kinds it runs (None: every kind)
    # Set on a node without the gateway's disk: input blobs are cached here, outputs uploaded.
    node_cache_dir: str | None = None
    node_cache_max_bytes: int = 0  # the node cache's bound (0: none)


async def serve(config: RunnerConfig, token: str, parent_fd: int | None) -> None:
    stop, wake = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if parent_fd is not None:
        _watch_parent(loop, parent_fd, stop, wake)
    await run_jobs(config, token, stop, wake)


def _storage(
    config: RunnerConfig, token: str, catalog: Catalog, sessions: sessionmaker[Session]
) -> tuple[JobFiles, Path]:
    """The runner's files and the root of its work directories: through the gateway on a node
    of its own (work under the node cache), else the local store (work under the home)."""
    if config.node_cache_dir is not None:
        root = Path(config.node_cache_dir).expanduser()
        remote = GatewayJobFiles(
            catalog_lookup(sessions),
            NodeCache(root, config.node_cache_max_bytes),
            Source(config.gateway_url, token),
            versions=catalog.get_version,
            verify=config.verify_tls,
        )
        return remote, root / "jobs"
    models = ModelStore(catalog, BlobStore(config.home), max_upload_bytes=config.max_upload_bytes)
    store = FileStore(sessions, models, FileLimits(max_bytes=1, max_line_bytes=1))
    return LocalJobFiles(store, models), config.home / "jobs"


async def run_jobs(
    config: RunnerConfig, token: str, stop: asyncio.Event, wake: asyncio.Event
) -> None:
    """Claim and run jobs until ``stop`` is set; ``wake`` says one was queued."""
    engine = create_db_engine(config.database_url)
    sessions = session_factory(engine)
    settings = config.jobs
    leases = JobLeases(
        sessions, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts
    )
    if config.release_runner is not None:
        await asyncio.to_thread(leases.release_runner, config.release_runner)
    catalog = Catalog(sessions)
    files, workdirs = _storage(config, token, catalog, sessions)
    connections = settings.line_concurrency * settings.max_concurrent + 2
    try:
        async with httpx.AsyncClient(
            base_url=config.gateway_url,
            verify=config.verify_tls,
            timeout=_LINE_TIMEOUT,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        ) as http:
            gateway = GatewayClient(http, token)
            if not await gateway.wait_ready(stop):
                return
            log.info("job runner %s: serving jobs", config.runner_id)
            handlers = job_handlers(
                gateway,
                files,
                settings,
                Evaluations(sessions),
                catalog=catalog,
                workdirs=workdirs,
                kinds=config.kinds,
            )
            if isinstance(files, GatewayJobFiles):
                handlers = pins_per_job(handlers, files)
            jobs = JobLoop(
                leases,
                handlers,
                runner=config.runner_id,
                max_concurrent=settings.max_concurrent,
                heartbeat_interval=heartbeat_interval(settings.lease_seconds),
            )
            await jobs.run(stop, wake)
    finally:
        if isinstance(files, GatewayJobFiles):
            files.close()
        engine.dispose()
        log.info("job runner %s: stopped", config.runner_id)


def pins_per_job(
    handlers: Mapping[str, JobHandler], files: GatewayJobFiles
) -> dict[str, JobHandler]:
    """``handlers``, each run of a job holding its own pins in the node cache (the versions
    ``files.model_path`` gives it) from its start to its end, however it ends."""
    return {kind: _JobPins(handler, files) for kind, handler in handlers.items()}


class _JobPins:
    """A job handler whose runs begin and end their job's pins (see :func:`pins_per_job`)."""

    def __init__(self, handler: JobHandler, files: GatewayJobFiles) -> None:
        self.kind = handler.kind
        self.handler = handler
        self.files = files

    async def run(self, ctx: JobContext) -> Outcome:
        lease = self.files.begin_job(ctx.job.id)
        try:
            return await self.handler.run(ctx)
        finally:
            # On a thread (it takes the cache's lock), to its end even when the run is
            # cancelled while it waits; a failure is logged, the job's outcome kept.
            ended = asyncio.ensure_future(asyncio.to_thread(self.files.end_job, ctx.job.id, lease))
            ended.add_done_callback(_log_unpin_failure(ctx.job.id))
            await asyncio.wait({ended})


def _log_unpin_failure(job_id: str) -> Callable[[asyncio.Future[None]], None]:
    def check(ended: asyncio.Future[None]) -> None:
        if not ended.cancelled() and (exc := ended.exception()) is not None:
            log.warning("job %s: its pins in the node cache were not let go: %s", job_id, exc)

    return check


def _watch_parent(
    loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event, wake: asyncio.Event
) -> None:
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if data:
            wake.set()
            return
        log.warning("the gateway that started this job runner is gone; stopping")
        loop.remove_reader(fd)
        stop.set()

    loop.add_reader(fd, readable)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmaas.jobs.runner")
    parser.add_argument("--parent-fd", type=int, default=None)
    args = parser.parse_args(argv)
    config = RunnerConfig.model_validate_json(os.environ.pop(RUNNER_CONFIG_ENV))
    token = os.environ.pop(RUNNER_TOKEN_ENV)
    setup_logging(config.log_level)
    # One line per batch line is the gateway's access log already; not again per request here.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(serve(config, token, args.parent_fd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
