"""The task loop: batches concurrent embed/classify/score requests into shared forward passes.

The IPC reader thread only calls ``submit`` (a queue put); one thread runs ``run``. When a
request arrives the loop waits up to ``window_s`` for more of the same kind (or until
``max_batch`` inputs are waiting), then prepares each request (tokenize, check lengths: a bad
request fails alone) and runs all prepared ones through the backend at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lmaas.errors import InternalError, LmaasError
from lmaas.protocol.tasks import TaskKind, TaskRequest, TaskResult

log = logging.getLogger(__name__)


class TaskBackend(Protocol):
    """What the loop needs from a model: per-request preparation, then one batched run."""

    def prepare(self, request: TaskRequest) -> Any:
        """Tokenize and validate one request; raise an ``LmaasError`` (e.g.
        ``InvalidRequestError``) to refuse it."""

    def run_batch(self, kind: TaskKind, prepared: Sequence[Any]) -> list[TaskResult]:
        """Run prepared requests of one kind together; one result per request, in order."""


@dataclass(slots=True)
class _Queued:
    request: TaskRequest
    arrival: float


# (request id, result or None, the error that failed it or None)
EmitFn = Callable[[str, TaskResult | None, LmaasError | None], None]


class TaskLoop:
    def __init__(
        self,
        backend: TaskBackend,
        emit: EmitFn,
        *,
        max_batch: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.emit = emit
        self.max_batch = max_batch
        self.window_s = window_s
        self.clock = clock
        self._inbox: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._held: list[_Queued] = []  # arrived, left for a later batch (other kind, no room)
        self._stop = threading.Event()
        self._running = 0
        self.steps = 0

    # --- called from other threads -------------------------------------------------------

    def submit(self, request: TaskRequest) -> None:
        self._inbox.put(_Queued(request, self.clock()))

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)

    def stats(self) -> dict[str, int]:
        return {"running": self._running, "waiting": self._inbox.qsize() + len(self._held)}

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stop.is_set():
            batch = self.next_batch(block=True)
            if batch:
                self.execute(batch)

    def next_batch(self, *, block: bool) -> list[_Queued]:
        """The requests to run together: the oldest waiting one and those of its kind that
        arrive within the window, up to ``max_batch`` inputs (the first always fits)."""
        if not self._held:
            try:
                item = self._inbox.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                return []
            if item is None:
                return []
            self._held.append(item)
        kind = self._held[0].request.kind
        deadline = self._held[0].arrival + self.window_s
        while self._inputs(kind) < self.max_batch:
            remaining = deadline - self.clock()
            try:
                item = (
                    self._inbox.get(timeout=remaining)
                    if remaining > 0
                    else self._inbox.get_nowait()
                )
            except queue.Empty:
                break
            if item is None:
                break
            self._held.append(item)
        batch: list[_Queued] = []
        size = 0
        rest: list[_Queued] = []
        for item in self._held:
            n = max(item.request.size(), 1)
            if item.request.kind == kind and (not batch or size + n <= self.max_batch):
                batch.append(item)
                size += n
            else:
                rest.append(item)
        self._held = rest
        return batch

    def _inputs(self, kind: TaskKind) -> int:
        return sum(max(q.request.size(), 1) for q in self._held if q.request.kind == kind)

    def execute(self, batch: list[_Queued]) -> None:
        """Prepare each request (refusing bad ones alone), then run the rest in one go."""
        start = self.clock()
        prepared: list[Any] = []
        accepted: list[_Queued] = []
        for item in batch:
            try:
                prepared.append(self.backend.prepare(item.request))
                accepted.append(item)
            except LmaasError as exc:
                self.emit(item.request.request_id, None, exc)
        if not accepted:
            return
        self._running = len(accepted)
        try:
            results = self.backend.run_batch(accepted[0].request.kind, prepared)
        except LmaasError as exc:
            for item in accepted:
                self.emit(item.request.request_id, None, exc)
            return
        except Exception:  # a model failure must fail the requests, never the worker
            log.exception("task batch of %d failed", len(accepted))
            error = InternalError("the model failed to run this request")
            for item in accepted:
                self.emit(item.request.request_id, None, error)
            return
        finally:
            self._running = 0
            self.steps += 1
        inputs = sum(max(item.request.size(), 1) for item in accepted)
        for item, result in zip(accepted, results, strict=True):
            result.queue_time = max(start - item.arrival, 0.0)
            result.batch_size = max(inputs, 1)
            try:
                self.emit(item.request.request_id, result, None)
            except Exception:  # a result too big to send fails its request, not the worker
                log.exception("could not send the result of %s", item.request.request_id)
                error = InternalError("the result of this request was too large to send")
                self.emit(item.request.request_id, None, error)
