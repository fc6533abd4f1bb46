"""Which node a Ray replica's actor prefers: the one with the fewest replicas of its deployment
(then of any), among the live nodes big enough for it, counted from the moment the actor is
made; a soft affinity that spills when that node is busy; Ray's SPREAD with a label selector,
or when only one node fits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmaas.controller.cluster.ray_spread import Spreader
from tests.unit.test_ray_cluster import ray_cluster, store_ref

GiB = 2**30
A, B, C = "a" * 56, "b" * 56, "c" * 56


def node(node_id: str, cpus: float = 4, alive: bool = True, **extra: float) -> dict[str, Any]:
    return {
        "NodeID": node_id,
        "Alive": alive,
        "Resources": {"CPU": cpus, "memory": 8 * GiB, **extra},
    }


ASK = {"num_cpus": 1, "memory": GiB}


def test_replicas_of_a_deployment_starting_at_once_go_to_different_nodes() -> None:
    spread = Spreader()
    nodes = [node(A), node(B)]
    assert spread.choose(nodes, ASK, "chat", "r1") == A
    assert spread.choose(nodes, ASK, "chat", "r2") == B  # r1 counts on A before it is placed
    assert spread.choose(nodes, ASK, "chat", "r3") in (A, B)
    # Another deployment starts on the node with fewer replicas of any deployment.
    spread.forget("chat", "r3")
    spread.placed("chat", "r2", "10.0.0.2/" + A[:8])  # Ray spilled r2 to A after all
    assert spread.choose(nodes, ASK, "embed", "e1") == B
    # A new run of a replica of chat (its node was lost) goes where chat has fewest.
    assert spread.choose(nodes, ASK, "chat", "r2") == B


def test_only_live_nodes_big_enough_count_and_one_is_left_to_ray() -> None:
    spread = Spreader()
    nodes = [node(A, cpus=0.5), node(B), node(C, alive=False)]
    assert spread.choose(nodes, ASK, "chat", "r1") is None  # only B fits: Ray's SPREAD
    slots = {**ASK, "resources": {"slot": 1}}
    nodes = [node(A), node(B, slot=1), node(C, slot=2)]
    assert [spread.choose(nodes, slots, "chat", r) for r in ("r1", "r2", "r3")] == [B, C, B]
    labelled = {**ASK, "label_selector": {"zone": "a"}}
    assert spread.choose(nodes, labelled, "chat", "r4") is None


def test_forgotten_replicas_free_their_node() -> None:
    spread = Spreader()
    nodes = [node(A), node(B)]
    assert spread.choose(nodes, ASK, "chat", "r1") == A
    spread.forget("chat", "r1")
    assert spread.choose(nodes, ASK, "chat", "r2") == A


def test_the_ray_kind_asks_for_a_soft_affinity_that_spills(tmp_path: Path) -> None:
    cluster, api = ray_cluster(tmp_path)
    cluster.spawn(store_ref(), "r1")
    cluster.spawn(store_ref(), "r2")
    strategies = [options["scheduling_strategy"] for options, _ in api.made]
    assert [s.node_id for s in strategies] == [A, B]
    assert all(s.soft and s._spill_on_unavailable for s in strategies)
