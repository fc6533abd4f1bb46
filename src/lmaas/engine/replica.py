"""One replica of a served model, as the router and the controller see it.

A replica may be a worker process on this machine or an actor on another one: nothing here
assumes a shared disk or a local process. Cluster kinds (``lmaas.controller.cluster``) make
replicas; ``ReplicatedEngine`` routes requests over them. The protocol lives in ``engine/`` so
that the router never imports the controller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from lmaas.engine.client import ReplicaHealth
from lmaas.protocol.engine import GenerateRequest, ModelInfo, TokenEvent
from lmaas.protocol.tasks import TaskRequest, TaskResult


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    outstanding: int  # requests this gateway sent to the replica that have not finished
    running: int  # sequences in the replica's running batch (as it last reported)
    waiting: int  # sequences waiting for a slot in the replica (as it last reported)
    # tokens per second one of its running sequences gets (engine/rate.py); None until measured
    sequence_rate: float | None = None


class Replica(Protocol):
    """A model server the router can send requests to, and the controller can start and stop.

    Lifecycle: ``start`` returns at once and the replica loads in the background (restarting
    by itself when it dies); ``wait_ready`` waits for it; ``stop`` ends it for good. While
    ``ready`` is true it takes requests. When a request fails with ``ServiceUnavailableError``
    and ``ready`` is false right after, the replica died under it: a request that had produced
    nothing may be retried elsewhere.
    """

    @property
    def id(self) -> str:
        """Opaque and unique among the cluster's replicas."""

    @property
    def node(self) -> str:
        """The machine (or cluster node) it runs on."""

    @property
    def index(self) -> int:
        """Its ordinal within the deployment."""

    @property
    def label(self) -> str:
        """A short name for logs, e.g. ``chat#2``."""

    @property
    def version(self) -> int | None:
        """The model store version it serves (``None`` for a file outside the store)."""

    @property
    def ready(self) -> bool:
        """Loaded, connected and taking requests."""

    @property
    def capacity(self) -> int:
        """Requests it runs at once when ready; 0 while it is not."""

    @property
    def info(self) -> ModelInfo | None:
        """The model's facts once loaded."""

    @property
    def last_error(self) -> str | None:
        """Why it last failed to start or died, until it is ready again."""

    def load(self) -> ReplicaLoad:
        """Its current load, without I/O."""

    def health(self) -> ReplicaHealth:
        """Its state for ``/ready`` and the admin API, without I/O."""

    async def start(self) -> None:
        """Begin loading (returns at once); the replica restarts itself when it dies."""

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until it is ready or ``timeout`` seconds passed; True when ready."""

    async def stop(self, *, now: bool = False) -> None:
        """Stop it for good. Graceful by default (the model server is asked to exit and given
        a moment); ``now`` ends it at once. Requests still in flight fail with a 503."""

    def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        """Stream one request's events (see ``EngineClient.generate``)."""

    async def run_task(self, request: TaskRequest) -> TaskResult:
        """Run one non-generation task."""

    async def abort(self, request_id: str) -> None:
        """Stop a request it is running, if it still is."""
