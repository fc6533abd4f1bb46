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
from collections.abc import Callable
from pathlib import Path

from lmaas.config import Settings
from lmaas.controller.cluster.base import ModelRef
from lmaas.controller.cluster.machine import local_capacity
from lmaas.controller.cluster.supervised import STREAM_LIMIT, SupervisedReplica
from lmaas.controller.pool import Capacity
from lmaas.errors import InvalidRequestError
from lmaas.store.folder import FolderFile
from lmaas.store.model_store import ModelStore

log = logging.getLogger(__name__)

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
        if model.placement is not None and not model.placement.empty:
            raise InvalidRequestError(
                f"placement ({model.placement.describe()}) chooses Ray nodes, and this server "
                "runs replicas on its own machine (cluster.kind local): drop it, or serve with "
                "--ray-address",
                param="placement",
            )
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


class LocalReplica(SupervisedReplica):
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
        super().__init__(
            model,
            index,
            node=node,
            start_timeout=start_timeout,
            health_interval=health_interval,
            backoff_max=backoff_max,
        )
        self._locate = locate
        self._proc: asyncio.subprocess.Process | None = None

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
        await self._end_supervision()

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
        proc = self._proc
        gone = asyncio.ensure_future(_exit_of(proc))
        try:
            reader, writer = await asyncio.open_unix_connection(sock=parent, limit=STREAM_LIMIT)
            # the pid is for the log only: the replica's identity is its id
            channel = await self._connect(reader, writer, gone, f"pid {proc.pid}")
            await self._watch(channel, gone)
        finally:
            gone.cancel()

    async def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self._drop_channel()


async def _exit_of(proc: asyncio.subprocess.Process) -> str:
    return f"worker exited with code {await proc.wait()}"


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), _EXIT_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
