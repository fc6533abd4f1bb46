"""DeploymentManager over a fake cluster and an in-memory catalog: model names resolve from
memory on the request path, alias moves are picked up, the cluster kind comes from settings."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from lmaas.config import ModelConfig, Settings
from lmaas.controller.cluster.base import ClusterKinds
from lmaas.controller.cluster.kinds import installed_kinds
from lmaas.controller.manager import DeploymentManager
from lmaas.controller.specs import KEEP, DeploymentSpec
from lmaas.errors import InvalidRequestError, NotFoundError
from lmaas.protocol.deploy import DeploymentCreate, DeploymentPatch
from lmaas.store.catalog import StoredModel, VersionInfo
from tests.fakes import FakeCluster

MODEL = "chat-model"


def _off_the_event_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # a worker thread (asyncio.to_thread): fine
    raise AssertionError("the catalog was queried on the event loop")


class FakeCatalog:
    """Versions 1-3 of one model; every query counts and must run off the event loop."""

    def __init__(self) -> None:
        self.aliases = {"latest": 3, "production": 2, "canary": 3}
        self.queries = 0

    def _query(self, model: str) -> None:
        _off_the_event_loop()
        self.queries += 1
        if model != MODEL:
            raise NotFoundError(f"model {model!r} does not exist", param="model")

    def get_version(self, model: str, ref: int | str = "latest") -> VersionInfo:
        self._query(model)
        number = ref if isinstance(ref, int) else self.aliases.get(ref)
        if number not in (1, 2, 3):
            raise NotFoundError(f"{model}:{ref} does not exist", param="model")
        return VersionInfo(
            model=model,
            number=number,
            format="gguf",
            architecture="llama",
            parameter_count=1,
            context_length=1024,
            quantization=None,
            size_bytes=10,
            digest=f"sha256:{number:064x}",
            source="test",
            description="",
            created_at=datetime.now(UTC),
            state="ready",
            aliases=tuple(a for a, n in self.aliases.items() if n == number),
        )

    def get_model(self, model: str) -> StoredModel:
        self._query(model)
        return StoredModel(model, "", datetime.now(UTC), self.aliases["latest"], dict(self.aliases))


class FakeStore:
    def __init__(self) -> None:
        self.catalog = FakeCatalog()


class FakeSpecs:
    """DeploymentStore in memory."""

    def __init__(self) -> None:
        self.specs: dict[str, DeploymentSpec] = {}

    def list(self) -> list[DeploymentSpec]:
        return [self.specs[n] for n in sorted(self.specs)]

    def put(self, spec: DeploymentSpec) -> DeploymentSpec:
        self.specs[spec.name] = spec
        return spec

    create = put

    def update(
        self,
        name: str,
        *,
        replicas: int | None = None,
        reference: str | None = None,
        autoscaling_json: object = KEEP,
        placement_json: object = KEEP,
    ) -> DeploymentSpec:
        spec = self.specs[name]
        if replicas is not None:
            spec = dataclasses.replace(spec, replicas=replicas)
        if reference is not None:
            spec = dataclasses.replace(spec, reference=reference)
        if autoscaling_json is not KEEP:
            assert autoscaling_json is None or isinstance(autoscaling_json, str)
            spec = dataclasses.replace(spec, autoscaling_json=autoscaling_json)
        if placement_json is not KEEP:
            assert placement_json is None or isinstance(placement_json, str)
            spec = dataclasses.replace(spec, placement_json=placement_json)
        self.specs[name] = spec
        return spec

    def delete(self, name: str) -> None:
        del self.specs[name]


@pytest.fixture
def settings() -> Settings:
    return Settings(models=[ModelConfig(name=MODEL)], drain_timeout=5)


def make(settings: Settings) -> tuple[DeploymentManager, FakeCluster, FakeCatalog]:
    store = FakeStore()
    cluster = FakeCluster()
    manager = DeploymentManager(settings, store, FakeSpecs(), cluster=cluster)  # type: ignore[arg-type]
    return manager, cluster, store.catalog


@pytest.fixture
async def served(settings: Settings) -> Iterator[tuple[DeploymentManager, FakeCatalog]]:
    """The config deployment `chat-model` (follows latest: v3), `prod` following `production`
    (v2) and `pinned` on v1."""
    manager, _, catalog = make(settings)
    await manager.start()
    await manager.create(DeploymentCreate(model=f"{MODEL}:production", name="prod"))
    await manager.create(DeploymentCreate(model=f"{MODEL}:1", name="pinned"))
    yield manager, catalog
    await manager.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not predicate():  # noqa: ASYNC110 - a condition wait on fake state
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


async def test_names_resolve_from_memory(
    served: tuple[DeploymentManager, FakeCatalog],
) -> None:
    manager, catalog = served
    before = catalog.queries
    expected = {
        f"{MODEL}": MODEL,
        f"{MODEL}:latest": MODEL,
        f"{MODEL}:production": "prod",
        f"{MODEL}:canary": MODEL,  # an alias nobody follows, on the version `chat-model` serves
        f"{MODEL}:1": "pinned",
        f"{MODEL}:2": "prod",
        f"{MODEL}:3": MODEL,
    }
    for requested, name in expected.items():
        assert manager.resolve(requested) == name, requested
        engine = manager.engines.lookup(requested)
        assert engine is not None and engine.name == name
    for unknown in (f"{MODEL}:4", f"{MODEL}:nope", "other-model:production", "Bad Name!"):
        assert manager.resolve(unknown) is None, unknown
    assert {n: manager.version_of(n) for n in (MODEL, "prod", "pinned")} == {
        MODEL: 3,
        "prod": 2,
        "pinned": 1,
    }
    assert manager.served_versions() == {(MODEL, 1), (MODEL, 2), (MODEL, 3)}
    assert catalog.queries == before


async def test_alias_changes_are_read_once_and_followers_roll(
    served: tuple[DeploymentManager, FakeCatalog],
) -> None:
    manager, catalog = served
    catalog.aliases.update(canary=1, production=3)
    await manager.on_aliases_changed(MODEL)
    assert manager.resolve(f"{MODEL}:canary") == "pinned"
    await wait_for(lambda: manager.version_of("prod") == 3)
    assert manager.resolve(f"{MODEL}:production") == "prod"
    assert manager.get("prod").follows == "production"

    before = catalog.queries
    assert manager.resolve(f"{MODEL}:2") is None  # nothing serves v2 any more
    assert catalog.queries == before


async def test_update_and_delete_keep_resolution_current(
    served: tuple[DeploymentManager, FakeCatalog],
) -> None:
    manager, _ = served
    await manager.update("pinned", DeploymentPatch(model=f"{MODEL}:canary"))
    assert manager.version_of("pinned") == 3 and manager.resolve(f"{MODEL}:1") is None
    assert manager.get("pinned").follows == "canary"
    await manager.delete("prod")
    assert manager.resolve(f"{MODEL}:production") is None
    assert manager.engines.lookup("prod") is None


async def test_deployments_show_replica_ids_and_nodes(
    served: tuple[DeploymentManager, FakeCatalog],
) -> None:
    manager, _ = served
    await manager.update("prod", DeploymentPatch(replicas=2))
    out = manager.get("prod")
    assert (out.state, out.ready_replicas) == ("ready", 2)
    replicas = out.model_dump()["replica_status"]
    assert [(r["index"], r["node"]) for r in replicas] == [(0, "test-node"), (1, "test-node")]
    assert len({r["id"] for r in replicas}) == 2
    assert all("pid" not in r for r in replicas)


async def test_unknown_cluster_kind_is_reported_by_check_config() -> None:
    settings = Settings(models=[ModelConfig(name=MODEL)], cluster={"kind": "nope"})  # type: ignore[arg-type]
    manager = DeploymentManager(settings, FakeStore(), FakeSpecs())  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match=r"cluster\.kind") as caught:
        manager.check_config()
    assert "local" in caught.value.message


async def test_the_cluster_kind_comes_from_settings() -> None:
    kinds = ClusterKinds()
    kinds.register("fake", FakeCluster)
    settings = Settings(models=[ModelConfig(name=MODEL)], cluster={"kind": "fake"})  # type: ignore[arg-type]
    manager = DeploymentManager(settings, FakeStore(), FakeSpecs(), kinds=kinds)  # type: ignore[arg-type]
    await asyncio.to_thread(manager.check_config)  # before the server's loop, as `lmaas serve`
    await manager.start()
    assert isinstance(manager.cluster, FakeCluster)
    assert [r.label for r in manager.cluster.made] == [f"{MODEL}#0"]
    assert manager.cluster.made[0].model.digest == f"sha256:{3:064x}"
    await manager.close()
    assert manager.cluster.closed
    assert installed_kinds().names()[:1] == ["local"]
