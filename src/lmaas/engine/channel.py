"""The gateway's end of one worker's IPC channel."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

from lmaas.engine.ipc import FrameError, encode_frame, read_frame
from lmaas.engine.rate import TokenRate
from lmaas.errors import LmaasError, ServiceUnavailableError, from_wire
from lmaas.protocol.engine import GenerateRequest, TokenEvent
from lmaas.protocol.tasks import TaskRequest, TaskResult

log = logging.getLogger(__name__)

_Item = TokenEvent | LmaasError


class WorkerChannel:
    """Multiplexes many request streams over one msgpack connection to a worker."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.label = label
        self._accepts: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._streams: dict[str, asyncio.Queue[_Item]] = {}
        self._pongs: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: dict[str, asyncio.Future[TaskResult]] = {}
        self._ping_ids = itertools.count()
        self.closed = False
        self.close_reason = "worker channel closed"
        self.running = 0
        self.waiting = 0
        # What the worker last reported (a generation worker only): KV cells in use and in
        # all, and its preemptions since it started by reason (``kv_cache``, ``fairness``).
        self.kv_used = 0
        self.kv_capacity = 0
        self.preemptions: dict[str, int] = {}
        self.rate = TokenRate()
        self._task: asyncio.Task[None] | None = None

    @property
    def outstanding(self) -> int:
        return len(self._streams) + len(self._tasks)

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_loop(), name=f"channel-{self.label}")

    async def wait_closed(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    def _send(self, frame: dict[str, Any]) -> None:
        if self.closed:
            raise ServiceUnavailableError(f"{self.label}: {self.close_reason}")
        self._writer.write(encode_frame(frame))

    async def generate(self, req: GenerateRequest) -> AsyncIterator[TokenEvent]:
        rid = req.request_id
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        accepted: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._streams[rid] = queue
        self._accepts[rid] = accepted
        finished = False
        try:
            self._send({"k": "gen", "req": req.model_dump()})
            await self._writer.drain()
            await accepted
            while True:
                item = await queue.get()
                if isinstance(item, LmaasError):
                    finished = True
                    raise item
                if item.finish_reason is not None:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(rid, None)
            self._accepts.pop(rid, None)
            if not finished and not self.closed and accepted.done():
                with contextlib.suppress(LmaasError, OSError):
                    self._send({"k": "abort", "r": rid})

    async def run_task(self, req: TaskRequest) -> TaskResult:
        """Send one task and wait for its result (or its error)."""
        rid = req.request_id
        fut: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        self._tasks[rid] = fut
        try:
            self._send({"k": "task", "req": req.model_dump()})
            await self._writer.drain()
            return await fut
        finally:
            self._tasks.pop(rid, None)

    def abort(self, request_id: str) -> None:
        if request_id in self._streams and not self.closed:
            with contextlib.suppress(LmaasError, OSError):
                self._send({"k": "abort", "r": request_id})

    async def ping(self, timeout: float) -> dict[str, Any]:
        n = next(self._ping_ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pongs[n] = fut
        try:
            self._send({"k": "ping", "n": n})
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pongs.pop(n, None)

    def shutdown(self) -> None:
        with contextlib.suppress(LmaasError, OSError):
            self._send({"k": "shutdown"})

    def close(self) -> None:
        """Fail every in-flight request with a 503 and drop the connection."""
        if not self.closed:
            self._fail_all(
                ServiceUnavailableError(
                    f"the worker serving this model stopped ({self.label}); retry shortly"
                )
            )
            self._writer.close()
        if self._task is not None:
            self._task.cancel()

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await read_frame(self._reader)
                if frame is None:
                    break
                self._dispatch(frame)
        except (FrameError, OSError) as exc:
            self.close_reason = f"worker channel broke: {exc}"
        finally:
            self._fail_all(
                ServiceUnavailableError(
                    f"the worker serving this model stopped ({self.label}); retry shortly"
                )
            )
            self._writer.close()

    def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.get("k")
        if kind == "ev":
            self._update_stats(frame)
            for wire in frame.get("evs", ()):
                queue = self._streams.get(wire.get("r"))
                if queue is None:
                    continue
                event = TokenEvent.from_wire(wire)
                if event.error is not None:
                    queue.put_nowait(event.error)
                else:
                    queue.put_nowait(event)
        elif kind == "accepted":
            fut = self._accepts.get(frame.get("r", ""))
            if fut is not None and not fut.done():
                fut.set_result(frame)
        elif kind == "rejected":
            fut = self._accepts.get(frame.get("r", ""))
            if fut is not None and not fut.done():
                fut.set_exception(from_wire(frame.get("e")))
        elif kind == "task_result":
            self._task_result(frame)
        elif kind == "pong":
            self._update_stats(frame)
            pong = self._pongs.get(int(frame.get("n", -1)))
            if pong is not None and not pong.done():
                pong.set_result(frame)
        else:
            log.warning("%s: unknown frame kind %r", self.label, kind)

    def _update_stats(self, frame: dict[str, Any]) -> None:
        """Frames carry the worker's load; the gauges and the router read it from here."""
        stats = frame.get("s") or {}
        self.running = int(stats.get("running", self.running))
        self.waiting = int(stats.get("waiting", self.waiting))
        if "gen" in stats:
            self.rate.update(int(stats["gen"]), self.running)
        if "kvt" in stats:
            self.kv_used = int(stats.get("kv", 0))
            self.kv_capacity = int(stats["kvt"])
            self.preemptions = {
                "kv_cache": int(stats.get("pre_kv", 0)),
                "fairness": int(stats.get("pre_fair", 0)),
            }

    def _task_result(self, frame: dict[str, Any]) -> None:
        self._update_stats(frame)
        fut = self._tasks.get(str(frame.get("r", "")))
        if fut is None or fut.done():
            return
        e = frame.get("e")
        if e is not None:
            fut.set_exception(from_wire(e))
            return
        try:
            fut.set_result(TaskResult.model_validate(frame.get("res")))
        except ValueError as exc:
            fut.set_exception(ServiceUnavailableError(f"{self.label}: bad task result: {exc}"))

    def _fail_all(self, error: LmaasError) -> None:
        self.closed = True
        for fut in list(self._accepts.values()):
            if not fut.done():
                fut.set_exception(error)
        for queue in list(self._streams.values()):
            queue.put_nowait(error)
        for pong in list(self._pongs.values()):
            if not pong.done():
                pong.set_exception(error)
        for task in list(self._tasks.values()):
            if not task.done():
                task.set_exception(error)
