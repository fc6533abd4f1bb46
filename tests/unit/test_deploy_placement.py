"""A deployment's placement (Ray resources and node labels): the names Ray would refuse are
refused when the spec is made, the Ray kind asks for them over the cluster-wide ones, the local
kind refuses a placement it cannot honour (400), the manager keeps it in the spec and moves the
replicas by a rolling update when a PATCH changes it, and the CLI's flags make the object."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer
from pydantic import ValidationError

from lmaas.cli.deploy import _placement
from lmaas.config import ClusterSettings, EngineConfig, ModelConfig, PlacementConfig, Settings
from lmaas.controller.cluster.base import ModelRef
from lmaas.controller.cluster.local import LocalCluster
from lmaas.controller.manager import DeploymentManager
from lmaas.errors import InvalidRequestError
from lmaas.protocol.deploy import DeploymentCreate, DeploymentPatch
from tests.fakes import FakeCluster, FakeReplica
from tests.unit.test_deployment_manager import MODEL, FakeSpecs, FakeStore, wait_for
from tests.unit.test_ray_cluster import ray_cluster, store_ref

LARGE = PlacementConfig(resources={"lmaas_large": 1}, label_selector={"zone": "in(a, b)"})


@pytest.mark.parametrize(
    "good",
    [
        {"resources": {"lmaas_large": 1, "node:10.0.0.5": 0.001, "accelerator_type:X": 0.5}},
        {"label_selector": {"zone": "a", "ray.io/node-id": "!abc123", "tier": "!in(spot,x)"}},
        {"label_selector": {"example.com/pool": "in(a,b-2,c.3)"}},
        {},
    ],
)
def test_placements_ray_accepts_are_accepted(good: dict[str, object]) -> None:
    assert PlacementConfig.model_validate(good).model_dump() == {
        "resources": {},
        "label_selector": {},
        **good,
    }


def test_the_spaces_of_a_label_list_are_dropped() -> None:
    # Ray 2.60 takes `in(a, b)` for a label " b": no node would match it.
    placement = PlacementConfig(label_selector={"zone": "in(a,  b, c)", "tier": "!in(x, y)"})
    assert placement.label_selector == {"zone": "in(a,b,c)", "tier": "!in(x,y)"}


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"resources": {"CPU": 1}}, "CPUs come from the engine's threads"),
        ({"resources": {"memory": 1}}, "memory comes from the resource pool"),
        ({"resources": {"GPU": 1}}, "replicas run on CPUs"),
        ({"resources": {"lmaas_large": 0}}, "a quantity above 0"),
        ({"resources": {"lmaas_large": -1}}, "a quantity above 0"),
        ({"resources": {"lmaas_large": 0.00001}}, "to 4 decimal places"),
        ({"resources": {"lmaas large": 1}}, "resource name 'lmaas large'"),
        ({"resources": {"-x": 1}}, "resource name '-x'"),
        ({"label_selector": {"-zone": "a"}}, "label key '-zone'"),
        ({"label_selector": {"Bad_Prefix/zone": "a"}}, "label key"),
        ({"label_selector": {"zone": "a b"}}, "is not a value"),
        ({"label_selector": {"zone": "in()"}}, "is not a value"),
        ({"label_selector": {"zone": "!!a"}}, "is not a value"),
        ({"label_selector": {"zone": "x" * 64}}, "is not a value"),
        ({"nodes": ["a"]}, "Extra inputs are not permitted"),
    ],
)
def test_placements_ray_would_refuse_are_refused_when_made(
    bad: dict[str, object], says: str
) -> None:
    with pytest.raises(ValidationError, match=says.replace("(", r"\(")):
        PlacementConfig.model_validate(bad)
    with pytest.raises(ValidationError):  # the same rules for the cluster-wide settings
        ClusterSettings.model_validate({"ray_" + k: v for k, v in bad.items()})


def test_the_ray_kind_asks_for_the_deployment_s_placement_over_the_cluster_s(
    tmp_path: Path,
) -> None:
    cluster, api = ray_cluster(
        tmp_path, ray_resources={"lmaas_worker": 1}, ray_label_selector={"zone": "c", "os": "x"}
    )
    plain = store_ref()
    placed = dataclasses.replace(plain, placement=LARGE)
    options = cluster.demand(placed)
    assert options["resources"] == {"lmaas_worker": 1, "lmaas_large": 1}
    assert options["label_selector"] == {"zone": "in(a,b)", "os": "x"}  # its keys win
    assert cluster.demand(plain)["label_selector"] == {"zone": "c", "os": "x"}
    cluster.spawn(placed)
    assert api.made[-1][0]["resources"] == {"lmaas_worker": 1, "lmaas_large": 1}


def test_the_local_kind_refuses_a_placement_it_cannot_honour() -> None:
    local = LocalCluster(Settings(), store=None)
    ref = ModelRef("m", EngineConfig(), path="/models/m.gguf")
    local.check(ref)
    local.check(ModelRef("m", EngineConfig(), path="/m.gguf", placement=PlacementConfig()))
    with pytest.raises(InvalidRequestError) as refused:
        local.check(ModelRef("m", EngineConfig(), path="/m.gguf", placement=LARGE))
    error = refused.value
    assert (error.status_code, error.param) == (400, "placement")
    assert "lmaas_large=1, zone=in(a,b)" in error.message and "--ray-address" in error.message


def served(*models: ModelConfig) -> tuple[DeploymentManager, FakeCluster, FakeSpecs]:
    cluster, specs = FakeCluster(), FakeSpecs()
    settings = Settings(models=list(models), drain_timeout=5)
    manager = DeploymentManager(settings, FakeStore(), specs, cluster=cluster)  # type: ignore[arg-type]
    return manager, cluster, specs


def placement_of(replica: FakeReplica) -> PlacementConfig | None:
    return replica.model.placement  # type: ignore[no-any-return]


async def test_a_placement_is_kept_in_the_spec_and_a_change_rolls_the_replicas() -> None:
    manager, cluster, specs = served(ModelConfig(name=MODEL, placement=LARGE))
    await manager.start()
    assert json.loads(specs.specs[MODEL].placement_json or "") == LARGE.model_dump()
    assert placement_of(cluster.made[0]) == LARGE
    assert manager.get(MODEL).placement == LARGE

    body = DeploymentCreate(model=MODEL, name="small", replicas=2, placement=PlacementConfig())
    out = await manager.create(body)
    assert out.placement is None and specs.specs["small"].placement_json is None  # empty: none

    # A new placement moves the replicas: a full new set, then the old one drains.
    old = list(cluster.made[1:])
    zone = PlacementConfig(label_selector={"zone": "b"})
    out = await manager.update("small", DeploymentPatch(placement=zone))
    assert out.placement == zone and out.version == 3
    fresh = cluster.made[3:]
    assert len(fresh) == 2 and all(placement_of(r) == zone for r in fresh)
    await wait_for(lambda: all(r.stopped_now is not None for r in old))
    assert json.loads(specs.specs["small"].placement_json or "") == zone.model_dump()

    made = len(cluster.made)
    await manager.update("small", DeploymentPatch(placement=zone, replicas=2))  # unchanged
    assert len(cluster.made) == made
    await manager.update("small", DeploymentPatch(placement=None))  # removed: rolls back
    assert specs.specs["small"].placement_json is None
    assert len(cluster.made) == made + 2 and placement_of(cluster.made[-1]) is None
    await manager.close()


async def test_a_placement_the_cluster_refuses_changes_nothing() -> None:
    manager, cluster, specs = served(ModelConfig(name=MODEL))
    await manager.start()

    def refuse(model: ModelRef) -> None:
        if model.placement is not None:
            raise InvalidRequestError("no placement here", param="placement")

    cluster.check = refuse  # type: ignore[method-assign]
    with pytest.raises(InvalidRequestError, match="no placement here"):
        await manager.create(DeploymentCreate(model=MODEL, name="other", placement=LARGE))
    with pytest.raises(InvalidRequestError, match="no placement here"):
        await manager.update(MODEL, DeploymentPatch(placement=LARGE))
    assert sorted(specs.specs) == [MODEL] and specs.specs[MODEL].placement_json is None
    assert len(cluster.made) == 1 and manager.get(MODEL).placement is None
    await manager.close()


def test_the_cli_flags_make_the_placement_object() -> None:
    assert _placement(None, None) is None
    assert _placement(["lmaas_large=1", "node:10.0.0.5=0.01"], ["zone=in(a,b)", "tier=!spot"]) == {
        "resources": {"lmaas_large": 1.0, "node:10.0.0.5": 0.01},
        "label_selector": {"zone": "in(a,b)", "tier": "!spot"},
    }
    with pytest.raises(typer.BadParameter, match="not NAME=VALUE"):
        _placement(["lmaas_large"], None)
    with pytest.raises(typer.BadParameter, match="not a number"):
        _placement(["lmaas_large=many"], None)


def test_a_replica_ray_cannot_place_says_what_its_placement_waits_for() -> None:
    from lmaas.controller.cluster.ray import _wanted

    options = {"num_cpus": 0.125, "memory": 2**20, "resources": {"lmaas_large": 1}}
    assert _wanted({**options, "label_selector": {"zone": "b"}}) == (
        "with 0.125 CPU, 1 MiB memory and 1 lmaas_large free, labelled zone=b, or for the node "
        "to fetch the model"
    )
