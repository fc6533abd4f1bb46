"""Batches and a fine-tune whose job runners are Ray actors on another node, on a real Ray
cluster of two nodes on this machine (``ray.cluster_utils.Cluster``: a head, and a worker node
that alone has the custom resource the runner actors ask for) with the catalog on PostgreSQL: a
small chat batch completes with its runner on the worker node, its input fetched by digest into
the node cache and its output stored through the gateway; a runner actor killed mid-batch
(``ray.kill``) is replaced on that node and the batch completes with every line exactly once; a
two-step LoRA fine-tune runs in a runner actor of its own (``per_kind``) on the worker node,
its base model and files fetched by digest, its checkpoint kept at the gateway, and its Hugging
Face and GGUF versions land in the gateway's store with their aliases and held-out perplexity,
as the local runner's do.

Ray is in the dev extra: without it this module is skipped, except in CI (``CI=true``), where
it fails; so does an unreachable PostgreSQL there (``tests/postgres.py``). Every Ray process
this module starts is stopped at its end.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from lmaas.jobs.ray_runners import ACTOR_PREFIX
from lmaas.local_admin import read_token
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until
from tests.postgres import postgres_url, scratch_schema

pytestmark = pytest.mark.e2e

try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        raise
    pytest.skip("ray is not installed (pip install -e '.[dev]')", allow_module_level=True)

SLOW = 300  # Ray starts slowly on two shared cores
JOBS_SLOT = "lmaas_test_jobs"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[tuple[Any, Any]]:
    """A head node and a worker node with the jobs resource; removed at the end."""
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        worker = cluster.add_node(num_cpus=1, resources={JOBS_SLOT: 2})
        cluster.wait_for_nodes()
        yield cluster, worker
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def server(
    ray_cluster: tuple[Any, Any],
    postgres_admin: Engine,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    cluster, _ = ray_cluster
    home = tmp_path_factory.mktemp("lmaas-home")
    config = home / "lmaas.yaml"
    config.write_text(
        f"""
models:
  - name: {MODEL}
    engine: {{threads: 1, context_size: 1024}}
cluster:
  node_cache_dir: {home / "node-cache"}
jobs:
  lease_seconds: 4
  line_concurrency: 2
  ray:
    kinds: [batch, eval_run, fine_tune]
    num_cpus: 0.25
    resources: {{{JOBS_SLOT}: 1}}
    per_kind: {{fine_tune: {{num_cpus: 0.5}}}}
"""
    )
    with scratch_schema(postgres_admin, postgres_url()) as url:
        env = {"LMAAS_DATABASE_URL": url.render_as_string(hide_password=False)}
        proc = ServerProcess(
            home, "--config", str(config), "--ray-address", cluster.address, env=env
        )
        try:
            proc.wait_ready(timeout=SLOW)
            yield proc
        finally:
            proc.stop()


def submit(server: ServerProcess, ids: list[str], max_tokens: int) -> tuple[str, str]:
    """A chat batch of one line per id; its id and the sha256 of its input file."""
    lines = [
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": CHAT,
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"A word about {custom_id}."}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for custom_id in ids
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    r = httpx.post(
        f"{server.url}/v1/files",
        files={"file": ("in.jsonl", data)},
        data={"purpose": "batch"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{server.url}/v1/batches",
        json={"input_file_id": r.json()["id"], "endpoint": CHAT, "completion_window": "24h"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["id"], hashlib.sha256(data).hexdigest()


def batch(server: ServerProcess, batch_id: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/v1/batches/{batch_id}", timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def ended(server: ServerProcess, batch_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        b = batch(server, batch_id)
        return b if b["status"] in ("completed", "failed", "cancelled", "expired") else None

    return wait_until(done, SLOW, 0.25, f"batch {batch_id} to end")  # type: ignore[no-any-return]


def output_ids(server: ServerProcess, file_id: str) -> list[str]:
    r = httpx.get(f"{server.url}/v1/files/{file_id}/content", timeout=30)
    assert r.status_code == 200, r.text
    return [json.loads(line)["custom_id"] for line in r.text.splitlines()]


def runners_of(server: ServerProcess, batch_id: str) -> list[str]:
    """The runners named by the job's claim events ('started/resumed by runner X (...')."""
    token = read_token(server.log_path.parent)  # the local admin token of `serve`
    r = httpx.get(
        f"{server.url}/admin/jobs/{batch_id}/events",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return [
        e["message"].split("by runner ", 1)[1].split(" ", 1)[0]
        for e in r.json()["data"]
        if e["message"].startswith(("started by runner", "resumed by runner"))
    ]


def test_a_batch_runs_in_a_runner_actor_on_the_worker_node(
    server: ServerProcess, ray_cluster: tuple[Any, Any]
) -> None:
    _, worker = ray_cluster
    ids = [f"a{i}" for i in range(3)]
    batch_id, input_hex = submit(server, ids, max_tokens=2)
    done = ended(server, batch_id)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert output_ids(server, done["output_file_id"]) == ids
    (runner,) = runners_of(server, batch_id)
    node = runner.rsplit("-", 1)[0]
    assert node.endswith("/" + str(worker.node_id)[:8]), runner
    # The input came to the node by digest (the runner read no store directory).
    cache = server.log_path.parent / "node-cache" / "blobs" / f"sha256-{input_hex}"
    assert cache.is_file()


def test_a_runner_actor_killed_mid_batch_is_replaced_and_every_line_runs_once(
    server: ServerProcess, ray_cluster: tuple[Any, Any]
) -> None:
    cluster, worker = ray_cluster
    ray.init(address=cluster.address, namespace="lmaas", logging_level="ERROR")
    ids = [f"k{i}" for i in range(12)]
    batch_id, _ = submit(server, ids, max_tokens=12)
    wait_until(
        lambda: batch(server, batch_id)["request_counts"]["completed"] >= 2,
        SLOW,
        0.1,
        "two lines done",
    )
    (runner,) = runners_of(server, batch_id)
    actor = ray.get_actor(ACTOR_PREFIX + runner.rsplit("-", 1)[1])
    ray.kill(actor, no_restart=True)

    done = ended(server, batch_id)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    assert sorted(output_ids(server, done["output_file_id"])) == sorted(ids)  # each once
    first, second = runners_of(server, batch_id)
    assert first == runner and second != runner
    assert second.rsplit("-", 1)[0].endswith("/" + str(worker.node_id)[:8])


def upload(server: ServerProcess, lines: list[dict[str, Any]], purpose: str) -> tuple[str, str]:
    """A file's id and the sha256 of its bytes."""
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    r = httpx.post(
        f"{server.url}/v1/files",
        files={"file": ("data.jsonl", data)},
        data={"purpose": purpose},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["id"], hashlib.sha256(data).hexdigest()


def shout(word: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"Shout {word}."},
            {"role": "assistant", "content": f"{word.upper()}!"},
        ]
    }


def admin_get(server: ServerProcess, path: str) -> Any:
    token = read_token(server.log_path.parent)
    r = httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.timeout(600)
def test_a_short_fine_tune_runs_in_its_own_runner_actor_and_its_versions_reach_the_store(
    server: ServerProcess, ray_cluster: tuple[Any, Any]
) -> None:
    _, worker = ray_cluster
    train, _ = upload(server, [shout(w) for w in ("apple", "river", "stone", "cloud")], "fine-tune")
    valid, valid_hex = upload(server, [shout("maple")], "fine-tune")
    r = httpx.post(
        f"{server.url}/v1/fine_tuning/jobs",
        json={
            "model": MODEL,
            "training_file": train,
            "validation_file": valid,
            "suffix": "ray",
            "seed": 3,
            "hyperparameters": {"n_epochs": 1, "batch_size": 2},  # 2 steps
            "quantization": "F16",
            "deploy_replicas": 0,
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]

    def ended() -> dict[str, Any] | None:
        job = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}", timeout=30).json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    done = wait_until(ended, 540, 0.5, f"fine-tune {job_id} to end")
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"step": 2, "total_steps": 2}
    # Its checkpoint (step 2, the epoch's end) was kept at the gateway for a resume elsewhere.
    events = httpx.get(
        f"{server.url}/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}, timeout=30
    ).json()["data"]
    assert any(e["message"] == "checkpoint at step 2 (kept by the gateway)" for e in events)
    (runner,) = runners_of(server, job_id)
    assert runner.rsplit("-", 1)[0].endswith("/" + str(worker.node_id)[:8]), runner

    # The base model and the validation file came to the node by digest.
    base = admin_get(server, f"/admin/models/{MODEL}/versions/latest")
    cache = server.log_path.parent / "node-cache" / "blobs"
    assert (cache / f"sha256-{base['digest'].removeprefix('sha256:')}").is_file()
    assert (cache / f"sha256-{valid_hex}").is_file()

    # Both versions are in the gateway's store, made by this job, with their aliases and the
    # held-out perplexity; the GGUF one is the result's model_version.
    store_model, _, number = str(done["model_version"]).partition(":")
    model = admin_get(server, f"/admin/models/{store_model}")
    by_alias = {a: v for v in model["versions"] for a in v["aliases"]}
    assert (by_alias["hf"]["format"], by_alias["gguf"]["format"]) == ("hf", "gguf")
    assert str(by_alias["gguf"]["number"]) == number
    for made in (by_alias["hf"], by_alias["gguf"]):
        assert made["source"] == f"fine-tune {job_id} of {MODEL}:{base['number']}", made
        shown = admin_get(server, f"/admin/models/{store_model}/versions/{made['number']}")
        (evaluation,) = shown["evaluations"]
        assert "held-out perplexity" in evaluation["eval_name"], evaluation
