"""The one engine interface the HTTP layer sees.

``ReplicatedEngine`` (replicas of any cluster kind behind one router) and the test fake
implement ``EngineClient``; the gateway never imports a model library.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from lmaas.errors import InvalidRequestError
from lmaas.protocol.engine import GenerateRequest, ModelInfo, TokenEvent
from lmaas.protocol.tasks import TaskRequest, TaskResult


@dataclass(slots=True)
class ReplicaHealth:
    """One replica as ``/ready`` and ``/admin/deployments`` show it.

    ``id`` is opaque and unique among the cluster's replicas; ``node`` names the machine it
    runs on. No process id: a replica may live on another machine.
    """

    id: str
    index: int  # its ordinal within the deployment (#0, #1, ...)
    state: str  # starting | ready | failed | draining | stopped
    node: str
    version: int | None = None  # the model store version it serves, when it came from the store
    restarts: int = 0
    last_error: str | None = None
    outstanding: int = 0
    # A generation replica's KV cache as its worker last reported it (cells in use, cached
    # prefixes included, and in all; 0 when unknown), and its worker's preemptions since that
    # worker started, by reason (``kv_cache``, ``fairness``): the metrics read them.
    kv_used: int = 0
    kv_capacity: int = 0
    preemptions: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class EngineHealth:
    ready: bool
    running: int = 0
    waiting: int = 0
    replicas: list[ReplicaHealth] = field(default_factory=list)


class EngineClient(ABC):
    """Serves one model name."""

    name: str

    @property
    @abstractmethod
    def info(self) -> ModelInfo | None:
        """The model's facts once a replica has loaded it (``None`` before)."""

    @property
    @abstractmethod
    def capacity(self) -> int:
        """Requests that can run at once across ready replicas (0 when none is ready)."""

    @property
    @abstractmethod
    def outstanding(self) -> int:
        """Requests submitted and not yet finished."""

    @property
    def sequence_rate(self) -> float | None:
        """Tokens per second one running sequence gets on its replicas under their current load,
        as measured (``None`` until known); admission estimates waits from it."""
        return None

    async def until_ready(self) -> None:  # noqa: B027 - optional hook
        """Return when a request may be admitted: at once, unless the engine holds requests
        while it scales from zero (then when a replica is ready, or its hold timed out)."""

    @abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        """Stream the request's events; the last one has ``finish_reason`` set.

        Raises an ``LmaasError`` before the first event when the request is refused (bad input,
        no ready replica) and mid-stream when the replica dies. Closing the iterator early
        aborts the request and frees its slot.
        """

    async def run_task(self, request: TaskRequest) -> TaskResult:
        """Run one non-generation task (embed, classify, score, tokenize, detokenize).

        Raises an ``LmaasError`` when the model refuses it (bad input, a task the model cannot
        do) or no replica can run it. Engines that run no tasks keep this default.
        """
        raise InvalidRequestError(
            f"model '{self.name}' does not run {request.kind} tasks", param="model"
        )

    @abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request if it is still running."""

    @abstractmethod
    def health(self) -> EngineHealth:
        """Readiness and load, without I/O."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Begin serving (start processes, connect)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop serving and release processes."""
