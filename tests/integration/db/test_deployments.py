"""DeploymentStore on SQLite and PostgreSQL: create, conflict, put (reconcile), update, delete."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from lmaas.controller.specs import DeploymentSpec, DeploymentStore
from lmaas.db import session_factory, upgrade_to_head
from lmaas.errors import ConflictError, NotFoundError


@pytest.fixture
def specs(db_engine: Engine) -> DeploymentStore:
    upgrade_to_head(db_engine)
    return DeploymentStore(session_factory(db_engine))


def spec(name: str = "chat", **changes: object) -> DeploymentSpec:
    values: dict[str, object] = {
        "name": name,
        "reference": "smollm2:production",
        "path": None,
        "replicas": 2,
        "engine_json": '{"context_size": 4096}',
        "source": "api",
    }
    values.update(changes)
    return DeploymentSpec(**values)  # type: ignore[arg-type]


def test_create_get_list_and_conflict(specs: DeploymentStore) -> None:
    created = specs.create(spec())
    assert created.created_at is not None and created.created_at.tzinfo is not None
    assert specs.get("chat").reference == "smollm2:production"
    specs.create(spec("a-first", replicas=0))
    assert [s.name for s in specs.list()] == ["a-first", "chat"]
    with pytest.raises(ConflictError):
        specs.create(spec())
    with pytest.raises(NotFoundError):
        specs.get("nope")


def test_put_replaces_and_update_changes_fields(specs: DeploymentStore) -> None:
    specs.put(spec(source="config", replicas=1))
    specs.put(spec(source="config", replicas=3, reference="smollm2:7"))
    (only,) = specs.list()
    assert (only.replicas, only.reference, only.source) == (3, "smollm2:7", "config")
    specs.update("chat", replicas=0)
    assert specs.get("chat").replicas == 0
    specs.put(spec("file", reference=None, path="/models/x.gguf"))
    updated = specs.update("file", reference="smollm2")
    assert (updated.reference, updated.path) == ("smollm2", None)
    with pytest.raises(NotFoundError):
        specs.update("nope", replicas=1)


def test_delete(specs: DeploymentStore) -> None:
    specs.create(spec())
    specs.delete("chat")
    assert specs.list() == []
    with pytest.raises(NotFoundError):
        specs.delete("chat")


def test_the_autoscaling_config_is_kept_and_changed_apart(specs: DeploymentStore) -> None:
    auto = '{"min_replicas": 0, "max_replicas": 4}'
    specs.create(spec(autoscaling_json=auto, replicas=0))
    assert specs.get("chat").autoscaling_json == auto
    specs.update("chat", replicas=1)  # a change of replicas leaves the config as it is
    assert specs.get("chat").autoscaling_json == auto
    specs.update("chat", replicas=3, autoscaling_json=None)  # autoscaling off
    off = specs.get("chat")
    assert (off.replicas, off.autoscaling_json) == (3, None)
    specs.put(spec(autoscaling_json=auto))
    assert specs.list()[0].autoscaling_json == auto


def test_the_placement_is_kept_and_changed_apart(specs: DeploymentStore) -> None:
    placed = '{"resources": {"lmaas_large": 1.0}, "label_selector": {"zone": "a"}}'
    specs.create(spec(placement_json=placed))
    assert specs.get("chat").placement_json == placed
    specs.update("chat", replicas=1, reference="smollm2:2")  # other changes leave it
    assert specs.get("chat").placement_json == placed
    specs.update("chat", placement_json=None)
    assert specs.get("chat").placement_json is None
    specs.put(spec(placement_json=placed, source="config"))
    assert specs.list()[0].placement_json == placed
