"""The cluster seam: what the deployment controller asks of a place that runs replicas.

A ``Cluster`` makes ``Replica``s (the protocol is in :mod:`lmaas.engine.replica`, so the router
can use it without importing the controller). A replica is given a ``ModelRef``: the store
model, version and sha256 digests of its files plus the engine config, never a path it must
already have, so a replica on another machine can fetch the blobs by digest and verify them.
Each cluster kind is built from the settings and the model store (its way to the bytes) by a
factory registered under a name in ``ClusterKinds``; ``cluster.kind`` in the settings picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from lmaas.config import EngineConfig, PlacementConfig, Settings
from lmaas.controller.pool import ModelFacts
from lmaas.engine.replica import Replica
from lmaas.errors import InvalidRequestError

if TYPE_CHECKING:
    from lmaas.controller.pool import Capacity
    from lmaas.store.model_store import ModelStore

__all__ = ["Cluster", "ClusterFactory", "ClusterKinds", "ModelFile", "ModelRef", "Replica"]


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One file of a model: where it goes in the model's folder, and its content by digest."""

    path: str
    digest: str  # sha256 of the content: how a node fetches it from the store and checks it
    size: int


@dataclass(frozen=True, slots=True)
class ModelRef:
    """What a replica serves, by reference.

    A store version has ``model``, ``version``, ``format`` and ``digest`` (the GGUF file's, or a
    Hugging Face folder's manifest's) and its ``files``. A file outside the store has only
    ``path``, a path on the gateway's machine: only a cluster that shares that disk (local) can
    serve it.
    """

    name: str  # the served (deployment) name
    engine: EngineConfig
    model: str | None = None
    version: int | None = None
    format: Literal["gguf", "hf"] | None = None
    digest: str | None = None
    files: tuple[ModelFile, ...] = ()
    path: str | None = None
    # What is known of its memory (kept with the store version); the resource pool counts it.
    facts: ModelFacts | None = None
    # Where its replicas may run (Ray resources, node labels): a cluster that cannot honour it
    # refuses it in ``check``.
    placement: PlacementConfig | None = None

    def describe(self) -> str:
        if self.model is not None:
            return f"{self.model}:{self.version}"
        return str(self.path)

    def memory_facts(self) -> ModelFacts:
        """``facts``, or what the reference itself tells (its backend, its files' sizes)."""
        if self.facts is not None:
            return self.facts
        backend = self.engine.backend
        if backend == "auto":
            backend = "transformers" if self.format == "hf" else "llamacpp"
        return ModelFacts(
            backend=backend,
            file_bytes=sum(f.size for f in self.files),
            shared_key=self.digest or self.path,
        )


class Cluster(Protocol):
    """Makes replicas; one per server. Replicas it made are stopped by their owner."""

    @property
    def kind(self) -> str:
        """The registered name of this cluster kind (``local``, ``ray``...)."""

    def check(self, model: ModelRef) -> None:
        """Raise an ``LmaasError`` when this cluster cannot serve ``model`` at all (its files,
        or a ``placement`` it cannot honour)."""

    def new_replica(self, model: ModelRef, *, index: int) -> Replica:
        """A replica of deployment ``model.name`` serving ``model``, not started yet."""

    def capacity(self) -> Capacity | None:
        """What the cluster offers replicas (cores, memory), which the deployment manager's
        resource pool (``controller/pool.py``) places replicas against; ``None``: the cluster
        places replicas itself and the manager counts nothing."""

    async def close(self) -> None:
        """Release what the cluster holds (connections); replicas are stopped before."""


ClusterFactory = Callable[[Settings, "ModelStore | None"], Cluster]


class ClusterKinds:
    """The cluster kinds a server can use, by name. Built-in kinds and plugins register the
    same way: a factory ``(settings, store) -> Cluster`` under a name."""

    def __init__(self) -> None:
        self._factories: dict[str, ClusterFactory] = {}

    def register(self, kind: str, factory: ClusterFactory) -> None:
        self._factories[kind] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def create(self, settings: Settings, store: ModelStore | None) -> Cluster:
        kind = settings.cluster.kind
        factory = self._factories.get(kind)
        if factory is None:
            raise InvalidRequestError(
                f"unknown cluster kind {kind!r}; set cluster.kind to one of: "
                f"{', '.join(self.names())}",
                param="cluster.kind",
            )
        return factory(settings, store)
