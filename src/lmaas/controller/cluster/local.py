"""Local cluster: one worker subprocess per replica, started, health-checked and restarted.

A worker talks to the gateway over an inherited ``socketpair`` end, so no socket file or port
is exposed. A crash of the worker (a bad model file, ``kill -9``) fails only the requests it was
running; the supervisor restarts it with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from lmaas.config import ModelConfig
from lmaas.engine.channel import WorkerChannel
from lmaas.engine.client import ReplicaHealth
from lmaas.engine.ipc import FrameError, read_frame
from lmaas.protocol.engine import ModelInfo

log = logging.getLogger(__name__)

# A worker that stayed up this long is considered healthy again: backoff starts over.
_STABLE_AFTER = 60.0


class WorkerProcess:
    """Supervises one replica: spawn, wait until loaded, ping, restart when it dies."""

    def __init__(
        self,
        model: ModelConfig,
        index: int,
        *,
        start_timeout: float,
        health_interval: float,
        backoff_max: float,
        on_ready: Callable[[ModelInfo], None] | None = None,
        version: int | None = None,
    ) -> None:
        self.model = model
        self.index = index
        self.version = version
        self.label = f"{model.name}#{index}"
        self.start_timeout = start_timeout
        self.health_interval = health_interval
        self.backoff_max = backoff_max
        self.on_ready = on_ready
        self.state = "stopped"
        self.restarts = 0
        self.last_error: str | None = None
        self.pid: int | None = None
        self.channel: WorkerChannel | None = None
        self.info: ModelInfo | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready_event = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.channel is not None and not self.channel.closed

    def health(self) -> ReplicaHealth:
        return ReplicaHealth(
            index=self.index,
            state=self.state,
            version=self.version,
            pid=self.pid,
            restarts=self.restarts,
            last_error=self.last_error,
            outstanding=self.channel.outstanding if self.channel else 0,
        )

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.label}")

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        return self.ready

    async def stop(self) -> None:
        self._stopping = True
        if self.channel is not None:
            self.channel.shutdown()
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
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
                str(self.model.resolve_path()),
                "--engine-json",
                self.model.engine.model_dump_json(),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            child.close()
        self.pid = self._proc.pid
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
        if self.on_ready is not None:
            self.on_ready(self.info)
        log.info("%s: ready (pid %s)", self.label, self.pid)
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
        self.pid = None
