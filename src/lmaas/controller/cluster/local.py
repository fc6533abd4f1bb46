"""Local cluster: one worker subprocess per replica, started, health-checked and restarted.

A worker talks to the gateway over an inherited ``socketpair`` end, so no socket file or port
is exposed. A crash of the worker (a bad model file, ``kill -9``) fails only the requests it was
running; the supervisor restarts it with exponential backoff. Replicas share the gateway's disk,
so a model reference resolves to the store's own files (a folder is materialised on first use).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from lmaas.config import Settings
from lmaas.controller.cluster.base import ModelRef
from lmaas.controller.cluster.machine import local_capacity
from lmaas.controller.pool import Capacity
from lmaas.engine.channel import WorkerChannel
from lmaas.engine.client import ReplicaHealth
from lmaas.engine.ipc import FrameError, read_frame
from lmaas.engine.replica import ReplicaLoad
from lmaas.errors import InvalidRequestError, ServiceUnavailableError
from lmaas.protocol.engine import GenerateRequest, ModelInfo, TokenEvent
from lmaas.protocol.tasks import TaskRequest, TaskResult
from lmaas.store.folder import FolderFile
from lmaas.store.model_store import ModelStore

log = logging.getLogger(__name__)

# A worker that stayed up this long is considered healthy again: backoff starts over.
_STABLE_AFTER = 60.0
# How long a worker asked to exit (graceful stop) gets before it is terminated, and how long
# a terminated one gets before it is killed.
_EXIT_GRACE = 5.0


class LocalCluster:
    """Replicas as worker subprocesses of this server, reading the store's files in place."""

    kind = "local"

    def __init__(self, settings: Settings, store: ModelStore | None) -> None:
        self.settings = settings
        self.store = store
        self.node = socket.gethostname()

    def check(self, model: ModelRef) -> None:
        if model.path is None and self.store is None:
            raise InvalidRequestError(
                f"{model.describe()} is a model of the store, and this server has none",
                param="model",
            )

    def capacity(self) -> Capacity:
        return local_capacity(self.node, self.settings.cluster)

    def new_replica(self, model: ModelRef, *, index: int) -> LocalReplica:
        return LocalReplica(
            model,
            index,
            locate=self.locate,
            node=self.node,
            start_timeout=self.settings.worker_start_timeout,
            health_interval=self.settings.health_interval,
            backoff_max=self.settings.restart_backoff_max,
        )

    def locate(self, model: ModelRef) -> Path:
        """The model's file or folder on this machine (blocking: folders are built on first
        use from their blobs)."""
        if model.path is not None:
            return Path(model.path)
        if self.store is None or model.digest is None:
            raise RuntimeError(f"{model.describe()}: no store to read it from")
        if model.format == "hf":
            files = [FolderFile(f.path, f.digest, f.size) for f in model.files]
            return self.store.folders.ensure(model.digest, files)
        path = self.store.blobs.path_for(model.digest)
        if not path.is_file():
            raise RuntimeError(f"{model.describe()}: blob {model.digest} is missing from the store")
        return path

    async def close(self) -> None:
        pass


class LocalReplica:
    """Supervises one worker process: spawn, wait until loaded, ping, restart when it dies."""

    def __init__(
        self,
        model: ModelRef,
        index: int,
        *,
        locate: Callable[[ModelRef], Path],
        node: str,
        start_timeout: float,
        health_interval: float,
        backoff_max: float,
    ) -> None:
        self.model = model
        self.index = index
        self.id = uuid.uuid4().hex[:12]
        self.node = node
        self.version = model.version
        self.label = f"{model.name}#{index}"
        self._locate = locate
        self.start_timeout = start_timeout
        self.health_interval = health_interval
        self.backoff_max = backoff_max
        self.state = "stopped"
        self.restarts = 0
        self.last_error: str | None = None
        self.channel: WorkerChannel | None = None
        self.info: ModelInfo | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready_event = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.channel is not None and not self.channel.closed

    @property
    def capacity(self) -> int:
        return self.model.engine.max_num_seqs if self.ready else 0

    def load(self) -> ReplicaLoad:
        c = self.channel
        if c is None or c.closed:  # its requests have failed or are failing
            return ReplicaLoad(0, 0, 0)
        return ReplicaLoad(c.outstanding, c.running, c.waiting, c.rate.per_sequence)

    def health(self) -> ReplicaHealth:
        return ReplicaHealth(
            id=self.id,
            index=self.index,
            state=self.state,
            node=self.node,
            version=self.version,
            restarts=self.restarts,
            last_error=self.last_error,
            outstanding=self.channel.outstanding if self.channel else 0,
        )

    # -- requests -------------------------------------------------------------------------------

    def _live_channel(self) -> WorkerChannel:
        channel = self.channel
        if channel is None or channel.closed:
            raise ServiceUnavailableError(f"{self.label} is not ready; retry shortly")
        return channel

    def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        return self._live_channel().generate(request)

    async def run_task(self, request: TaskRequest) -> TaskResult:
        return await self._live_channel().run_task(request)

    async def abort(self, request_id: str) -> None:
        if self.channel is not None:
            self.channel.abort(request_id)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.label}")

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        return self.ready

    async def stop(self, *, now: bool = False) -> None:
        self._stopping = True
        if self.channel is not None:
            self.channel.shutdown()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            exited = False
            if not now:  # the worker was asked to exit: give it a moment to do so
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), _EXIT_GRACE)
                    exited = True
            if not exited:
                await _terminate(proc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state = "stopped"

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:  # asked to stop: the worker exiting is the expected end
                    log.info("%s: stopped (%s)", self.label, exc)
                else:
                    self.last_error = str(exc)
                    log.error("%s: %s", self.label, exc)
            finally:
                self._ready_event.clear()
                await self._reap()
            if self._stopping:
                break
            self.state = "failed"
            self.restarts += 1
            if time.monotonic() - started > _STABLE_AFTER:
                backoff = 0.5
            log.warning("%s: restarting in %.1fs (restart %d)", self.label, backoff, self.restarts)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)

    async def _run_once(self) -> None:
        self.state = "starting"
        path = await asyncio.to_thread(self._locate, self.model)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "lmaas.worker",
                "--fd",
                str(child.fileno()),
                "--name",
                self.model.name,
                "--model-path",
                str(path),
                "--engine-json",
                self.model.engine.model_dump_json(),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            child.close()
        pid = self._proc.pid  # for the log only: the replica's identity is its id
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=2**26)
        hello = await self._first_frame(reader)
        if hello.get("k") != "ready":
            writer.close()
            raise RuntimeError(str(hello.get("message", "worker failed to start")))
        self.info = ModelInfo.model_validate(hello["info"])
        channel = WorkerChannel(reader, writer, self.label)
        channel.start()
        self.channel = channel
        self.state = "ready"
        self.last_error = None
        self._ready_event.set()
        log.info("%s: ready (replica %s, pid %s)", self.label, self.id, pid)
        await self._watch(channel)

    async def _first_frame(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        assert self._proc is not None
        read = asyncio.ensure_future(read_frame(reader))
        died = asyncio.ensure_future(self._proc.wait())
        done, _ = await asyncio.wait(
            {read, died}, timeout=self.start_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if read in done:
            died.cancel()
            try:
                frame = read.result()
            except FrameError as exc:
                raise RuntimeError(f"worker sent a bad first frame: {exc}") from exc
            if frame is None:
                raise RuntimeError("worker exited while loading the model")
            return frame
        read.cancel()
        died.cancel()
        if died in done:
            raise RuntimeError(f"worker exited with code {self._proc.returncode} while loading")
        raise RuntimeError(f"worker did not load the model within {self.start_timeout:.0f}s")

    async def _watch(self, channel: WorkerChannel) -> None:
        """Return when the worker dies, closes its channel or stops answering pings."""
        assert self._proc is not None
        died = asyncio.ensure_future(self._proc.wait())
        closed = asyncio.ensure_future(channel.wait_closed())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {died, closed},
                    timeout=self.health_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if died in done:
                    raise RuntimeError(f"worker exited with code {self._proc.returncode}")
                if closed in done:
                    raise RuntimeError(channel.close_reason)
                try:
                    await channel.ping(timeout=max(10.0, 5 * self.health_interval))
                except TimeoutError as exc:
                    raise RuntimeError("worker stopped answering health pings") from exc
                except Exception as exc:
                    raise RuntimeError(f"worker health ping failed: {exc}") from exc
        finally:
            died.cancel()
            closed.cancel()

    async def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self.channel is not None:
            # Fails the in-flight requests at once with a 503 instead of leaving them hanging.
            self.channel.close()
            self.channel = None


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), _EXIT_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
