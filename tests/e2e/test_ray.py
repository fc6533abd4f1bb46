"""The ``ray`` cluster kind on a real Ray cluster of two nodes on this machine (a head and a
worker node, one CPU each, ``ray.cluster_utils.Cluster``): `lmaas serve --ray-address` places a
deployment's two replicas on the two nodes, whose workers read the model from each node's own
cache (fetched from the gateway by digest); chat and embeddings answer; an autoscaled deployment
whose placement asks for a custom resource each node has one of (and a node label) grows from
one replica to one on each node under a step load of streaming chats and shrinks back when the
load drops to one stream, with no failed request; when the worker node is removed, requests
keep being answered and the lost replica is placed again on the head node.

Ray is in the dev extra: without it this module is skipped, except in CI (``CI=true``), where
it fails. Every Ray process this module starts is stopped at its end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from lmaas.local_admin import read_token
from tests.e2e.admin import Env
from tests.e2e.conftest import MODEL
from tests.e2e.load import Outcomes, keep_streaming, metric, settled
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

try:
    from ray.cluster_utils import Cluster
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        raise
    pytest.skip("ray is not installed (pip install -e '.[dev]')", allow_module_level=True)

EMBEDDER = "all-minilm-l6-v2"
# Ray starts slowly on two shared cores: conditions get generous deadlines.
SLOW = 300


# Each node has one slot: an autoscaled deployment asking for one per replica has at most one
# replica on each node. Each node is labelled with its role.
SLOT = "lmaas_test_slot"
ROLE = "lmaas-test-role"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[tuple[Any, Any]]:
    """A head node and a worker node, one CPU each; removed at the end of the module."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "resources": {SLOT: 1},
            "labels": {ROLE: "head"},
        },
    )
    try:
        worker = cluster.add_node(num_cpus=1, resources={SLOT: 1}, labels={ROLE: "worker"})
        cluster.wait_for_nodes()
        yield cluster, worker
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def server(
    ray_cluster: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    cluster, _ = ray_cluster
    home = tmp_path_factory.mktemp("lmaas-home")
    config = home / "lmaas.yaml"
    config.write_text(
        f"""
autoscaler: {{interval_s: 0.25}}
models:
  - name: {MODEL}
    replicas: 2
    engine: {{threads: 1, context_size: 1024}}
  - name: {EMBEDDER}
    engine: {{threads: 1}}
cluster:
  node_cache_dir: {home / "node-cache"}
"""
    )
    proc = ServerProcess(home, "--config", str(config), "--ray-address", cluster.address)
    try:
        proc.wait_ready(timeout=SLOW)
        yield proc
    finally:
        proc.stop()


def replicas(server: ServerProcess, model: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{server.url}/ready", timeout=10).json()
    return list(body["models"][model]["replicas"])


def chat(server: ServerProcess) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        timeout=60,
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
    )


def embed(server: ServerProcess) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/embeddings", timeout=60, json={"model": EMBEDDER, "input": "a node"}
    )


def node_id(node: Any) -> str:
    return str(node.node_id)[:8]


def ray_worker_model_paths() -> list[Path]:
    """The model path of every lmaas worker whose parent is a Ray actor (``ray::...``)."""
    paths = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info["cmdline"] or []
            parent = proc.parent()
            under_ray = parent is not None and " ".join(parent.cmdline()).startswith("ray::")
            if under_ray and "lmaas.worker" in cmdline and "--model-path" in cmdline[:-1]:
                paths.append(Path(cmdline[cmdline.index("--model-path") + 1]))
    return paths


def test_two_replicas_land_on_two_nodes_and_serve_from_node_caches(
    server: ServerProcess, ray_cluster: tuple[Any, Any]
) -> None:
    cluster, worker = ray_cluster
    chat_replicas = replicas(server, MODEL)
    assert [r["state"] for r in chat_replicas] == ["ready", "ready"]
    nodes = {r["node"].rsplit("/", 1)[-1] for r in chat_replicas}
    assert nodes == {node_id(cluster.head_node), node_id(worker)}, chat_replicas

    r = chat(server)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    r = embed(server)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 384

    # Workers read the model from the node cache (not the gateway's store), and a cached blob
    # is what its name says.
    cache = Path(server.log_path).parent / "node-cache"
    paths = ray_worker_model_paths()
    assert len(paths) == 3 and all(cache in p.parents for p in paths), paths
    gguf = next(p for p in paths if p.name.startswith("sha256-"))
    assert hashlib.sha256(gguf.read_bytes()).hexdigest() == gguf.name.removeprefix("sha256-")


STREAMS = 6  # 3 per replica with target_ongoing_requests 2: both replicas wanted
AUTOSCALED: dict[str, Any] = {
    "model": MODEL,
    "name": "elastic",
    "engine": {"threads": 1, "context_size": 1024},
    "autoscaling": {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 1,
        "downscale_delay_s": 2,
        "look_back_period_s": 1,
    },
    "placement": {"resources": {SLOT: 1}, "label_selector": {ROLE: "in(head, worker)"}},
}


def test_an_autoscaled_deployment_grows_onto_both_nodes_under_a_step_load_and_back(
    server: ServerProcess, ray_cluster: tuple[Any, Any]
) -> None:
    cluster, worker = ray_cluster
    home = Path(server.log_path).parent
    token = read_token(home)  # the local admin token of `serve`
    env = Env(home, server, token, token)
    name = AUTOSCALED["name"]
    r = env.req("POST", "/admin/deployments", env.admin, json=AUTOSCALED)
    assert r.status_code == 201, r.text
    # Ray would look for a label " worker": the space is dropped.
    assert r.json()["placement"]["label_selector"] == {ROLE: "in(head,worker)"}
    wait_until(lambda: settled(env, name, 1), SLOW, 0.25, "one ready replica")

    outcomes, step, trickle = Outcomes(), threading.Event(), threading.Event()
    with ThreadPoolExecutor(STREAMS) as pool:
        streams = [pool.submit(keep_streaming, env, name, outcomes, trickle)]
        streams += [
            pool.submit(keep_streaming, env, name, outcomes, step) for _ in range(STREAMS - 1)
        ]
        try:
            up = wait_until(lambda: settled(env, name, 2), SLOW, 0.25, "a second ready replica")
            # The load drops to one stream: the deployment shrinks while that one is served.
            step.set()
            down = wait_until(lambda: settled(env, name, 1), SLOW, 0.25, "one replica again")
        finally:
            step.set()
            trickle.set()
            for s in streams:
                s.result()
    nodes = {r["node"].rsplit("/", 1)[-1] for r in up["replica_status"]}
    assert nodes == {node_id(cluster.head_node), node_id(worker)}, up["replica_status"]
    events = down["autoscaling"]["events"]
    assert [(e["direction"], e["from_replicas"], e["to_replicas"]) for e in events] == [
        ("up", 1, 2),
        ("down", 2, 1),
    ]
    assert metric(env, "lmaas_autoscaler_decisions_total", model=name, direction="down") == 1
    assert outcomes.failed == [] and outcomes.ok >= STREAMS
    assert env.req("DELETE", f"/admin/deployments/{name}", env.admin).status_code == 204
    wait_until(
        lambda: name not in httpx.get(f"{server.url}/ready", timeout=10).json()["models"],
        SLOW,
        0.25,
        "the deployment to go",
    )


def test_a_removed_node_s_replica_is_placed_again_and_requests_keep_answering(
    server: ServerProcess, ray_cluster: tuple[Any, Any]
) -> None:
    cluster, worker = ray_cluster
    head = node_id(cluster.head_node)
    lost = next(r for r in replicas(server, MODEL) if r["node"].endswith(node_id(worker)))

    cluster.remove_node(worker)
    # The other replica answers at once; a request sent to the lost one before the gateway saw
    # it go had produced nothing, and is retried there.
    for _ in range(3):
        r = chat(server)
        assert r.status_code == 200, r.text

    def placed_again() -> bool:
        now = {r["id"]: r for r in replicas(server, MODEL)}
        moved = now.get(lost["id"])
        return bool(
            moved
            and moved["state"] == "ready"
            and moved["node"].endswith(head)
            and moved["restarts"] >= 1
            and all(r["state"] == "ready" for r in now.values())
        )

    wait_until(placed_again, SLOW, 1, "the lost replica to be placed again on the head node")
    wait_until(lambda: all(r["state"] == "ready" for r in replicas(server, EMBEDDER)), SLOW, 1)
    assert chat(server).status_code == 200
    assert embed(server).status_code == 200
