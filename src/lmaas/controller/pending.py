"""A replica the resource pool has no room for yet.

It stands in the deployment's set of replicas, so that ``/ready``, ``/admin/deployments`` and
``lmaas ps`` show it (state ``pending``, ``last_error`` saying what is missing), but it is never
started and never routed to (it is never ``ready``). The deployment replaces it by a real
replica of the same index once the pool has room (``Deployment.place_pending``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from lmaas.controller.cluster.base import ModelRef
from lmaas.engine.client import ReplicaHealth
from lmaas.engine.replica import ReplicaLoad
from lmaas.errors import ServiceUnavailableError
from lmaas.protocol.engine import GenerateRequest, ModelInfo, TokenEvent
from lmaas.protocol.tasks import TaskRequest, TaskResult

PENDING = "pending"


class PendingReplica:
    """Implements ``lmaas.engine.replica.Replica`` without a process."""

    def __init__(self, model: ModelRef, index: int, reason: str) -> None:
        self.model = model
        self.index = index
        self.id = f"pending-{uuid.uuid4().hex[:12]}"
        self.node = ""  # placed on no machine
        self.version = model.version
        self.label = f"{model.name}#{index}"
        self.last_error: str | None = reason
        self.info: ModelInfo | None = None
        self.ready = False
        self.capacity = 0

    def load(self) -> ReplicaLoad:
        return ReplicaLoad(0, 0, 0)

    def health(self) -> ReplicaHealth:
        return ReplicaHealth(
            id=self.id,
            index=self.index,
            state=PENDING,
            node=self.node,
            version=self.version,
            last_error=self.last_error,
        )

    async def start(self) -> None:
        pass

    async def wait_ready(self, timeout: float) -> bool:
        return False

    async def stop(self, *, now: bool = False) -> None:
        pass

    def _refuse(self) -> ServiceUnavailableError:
        return ServiceUnavailableError(f"{self.label} is pending: {self.last_error}")

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        raise self._refuse()
        yield  # pragma: no cover - makes this an async generator

    async def run_task(self, request: TaskRequest) -> TaskResult:
        raise self._refuse()

    async def abort(self, request_id: str) -> None:
        pass


def is_pending(replica: object) -> bool:
    return isinstance(replica, PendingReplica)
