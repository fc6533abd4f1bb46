"""What every replica whose model server is a worker (``python -m lmaas.worker``) shares, wherever
the worker runs: the channel to it, the load and health the router reads, and the supervisor
that starts the worker, watches it and starts it again with backoff when it dies.

A cluster kind says how one run of the worker is made (``_run_once``: a subprocess here, a Ray
actor on another node) and how it is cleaned up (``_reap``). A run hands the stream it reads and
writes to ``_connect``, together with a future that resolves (to a sentence) when the worker is
gone, and then waits in ``_watch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from lmaas.controller.cluster.base import ModelRef
from lmaas.engine.channel import WorkerChannel
from lmaas.engine.client import ReplicaHealth
from lmaas.engine.ipc import FrameError, read_frame
from lmaas.engine.replica import ReplicaLoad
from lmaas.errors import ServiceUnavailableError
from lmaas.protocol.engine import GenerateRequest, ModelInfo, TokenEvent
from lmaas.protocol.tasks import TaskRequest, TaskResult

log = logging.getLogger(__name__)

# A worker that stayed up this long is considered healthy again: backoff starts over.
STABLE_AFTER = 60.0
# The stream buffer of a worker connection (frames may be large: prompt logprobs, embeddings).
STREAM_LIMIT = 2**26


class SupervisedReplica:
    """Implements ``lmaas.engine.replica.Replica`` over a worker channel; subclasses make runs."""

    def __init__(
        self,
        model: ModelRef,
        index: int,
        *,
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
        self.start_timeout = start_timeout
        self.health_interval = health_interval
        self.backoff_max = backoff_max
        self.state = "stopped"
        self.restarts = 0
        self.last_error: str | None = None
        self.channel: WorkerChannel | None = None
        self.info: ModelInfo | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready_event = asyncio.Event()

    # -- what a run is (subclasses) -------------------------------------------------------------

    async def _run_once(self) -> None:
        """Start the worker, ``_connect`` to it, ``_watch`` it; raise when it is gone."""
        raise NotImplementedError

    async def _reap(self) -> None:
        """Make sure the worker of the last run is gone, then ``_drop_channel``."""
        raise NotImplementedError

    # -- the router's view ----------------------------------------------------------------------

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
        c = self.channel
        return ReplicaHealth(
            id=self.id,
            index=self.index,
            state=self.state,
            node=self.node,
            version=self.version,
            restarts=self.restarts,
            last_error=self.last_error,
            outstanding=c.outstanding if c else 0,
            kv_used=c.kv_used if c else 0,
            kv_capacity=c.kv_capacity if c else 0,
            preemptions=dict(c.preemptions) if c else {},
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

    async def _end_supervision(self) -> None:
        """Cancel the supervisor (``stop`` calls it once the worker was asked to go)."""
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
            if time.monotonic() - started > STABLE_AFTER:
                backoff = 0.5
            log.warning("%s: restarting in %.1fs (restart %d)", self.label, backoff, self.restarts)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)

    async def _connect(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        gone: asyncio.Future[str],
        where: str,
    ) -> WorkerChannel:
        """Wait for the worker's first frame (it has loaded the model, or says why not), then
        serve requests over the stream. ``gone`` resolves when the worker is gone."""
        hello = await self._first_frame(reader, gone)
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
        log.info("%s: ready (replica %s, %s)", self.label, self.id, where)
        return channel

    async def _first_frame(
        self, reader: asyncio.StreamReader, gone: asyncio.Future[str]
    ) -> dict[str, Any]:
        read = asyncio.ensure_future(read_frame(reader))
        waiting: set[asyncio.Future[Any]] = {read, gone}
        done, _ = await asyncio.wait(
            waiting, timeout=self.start_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if read in done:
            try:
                frame = read.result()
            except FrameError as exc:
                raise RuntimeError(f"worker sent a bad first frame: {exc}") from exc
            if frame is None:
                raise RuntimeError("worker exited while loading the model")
            return frame
        read.cancel()
        if gone in done:
            raise RuntimeError(f"{gone.result()} while loading")
        raise RuntimeError(f"worker did not load the model within {self.start_timeout:.0f}s")

    async def _watch(self, channel: WorkerChannel, gone: asyncio.Future[str]) -> None:
        """Return when the worker is gone, closes its channel or stops answering pings."""
        closed = asyncio.ensure_future(channel.wait_closed())
        waiting: set[asyncio.Future[Any]] = {gone, closed}
        try:
            while True:
                done, _ = await asyncio.wait(
                    waiting,
                    timeout=self.health_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if gone in done:
                    raise RuntimeError(gone.result())
                if closed in done:
                    raise RuntimeError(channel.close_reason)
                try:
                    await channel.ping(timeout=max(10.0, 5 * self.health_interval))
                except TimeoutError as exc:
                    raise RuntimeError("worker stopped answering health pings") from exc
                except Exception as exc:
                    raise RuntimeError(f"worker health ping failed: {exc}") from exc
        finally:
            closed.cancel()

    def _drop_channel(self) -> None:
        if self.channel is not None:
            # Fails the in-flight requests at once with a 503 instead of leaving them hanging.
            self.channel.close()
            self.channel = None
