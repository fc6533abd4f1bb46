"""The capacity planner against a real server: `lmaas profile` measures the served default
model and keeps its profile with the version; `GET /admin/plan` and `lmaas plan` plan from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.e2e.admin import Env, cli, served_env
from tests.e2e.conftest import MODEL

pytestmark = pytest.mark.e2e

LIGHT = {"model": MODEL, "rps": 0.05, "prompt_tokens": 64, "output_tokens": 8}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with served_env(tmp_path_factory.mktemp("plan-home")) as e:
        yield e


def plan_query(env: Env, **params: object) -> dict[str, object]:
    query = "&".join(f"{k}={v}" for k, v in {**LIGHT, **params}.items())
    r = env.get(f"/admin/plan?{query}", env.admin)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_plan_needs_a_profile_first(env: Env) -> None:
    r = env.get("/admin/plan?" + "&".join(f"{k}={v}" for k, v in LIGHT.items()), env.admin)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "profile_not_found"
    assert "lmaas profile" in r.json()["error"]["message"]


def test_profile_measures_the_replica_and_keeps_it_with_the_version(env: Env) -> None:
    out = cli(
        env.home,
        "profile", MODEL, "--batches", "1,2", "--tokens", "8", "--prompt-words", "96",
        "--reps", "1", key=env.admin, url=env.server.url,
    )  # fmt: skip
    assert "decode at batch 2" in out
    d = env.get(f"/admin/deployments/{MODEL}", env.admin).json()
    r = env.get(f"/admin/models/{d['model']}/versions/{d['version']}/profile", env.admin)
    assert r.status_code == 200, r.text
    p = r.json()
    assert set(p["decode_tokens_per_s"]) == {"1", "2"}
    assert all(0 < rate < 10_000 for rate in p["decode_tokens_per_s"].values())
    assert 10 < p["prefill_tokens_per_s"] < 100_000
    assert p["threads"] >= 1 and p["memory_bytes"] > 0
    assert len(p["prefill_seconds"]) >= 2 and all(t > 0 for t in p["prefill_seconds"].values())
    assert p["mixed_streams"] == 2 and p["mixed_seconds"] > 0  # 8 requests from 2 clients
    # Prefill and decode again at 1 thread, in a deployment that is gone once measured.
    if p["threads"] > 1:
        one = p["at_threads"]["1"]
        assert set(one["decode_tokens_per_s"]) == {"1", "2"}
        assert set(one["prefill_seconds"]) == set(p["prefill_seconds"])
    names = [x["name"] for x in env.get("/admin/deployments", env.admin).json()["data"]]
    assert MODEL in names and not [n for n in names if n.startswith("lmaas-profile-")]
    # The same profile is what the version shows by its alias.
    again = env.get(f"/admin/models/{d['model']}/versions/latest/profile", env.admin).json()
    assert again == p


def test_the_plan_follows_the_load(env: Env) -> None:
    light = plan_query(env)
    assert light["feasible"] and light["replicas"] == 1 and light["nodes"] == 1
    expected = light["expected"]
    assert isinstance(expected, dict)
    assert expected["requests_per_s"] == pytest.approx(0.05)
    assert expected["ttft_p50_s"] <= expected["ttft_p99_s"] <= expected["latency_p99_s"]
    # Ten times what one replica serves at most needs more than one machine like this one.
    most = expected["max_requests_per_s"]
    heavy = plan_query(env, rps=most * 10)
    assert heavy["feasible"] and heavy["nodes"] > 1
    assert heavy["replicas"] >= 10  # type: ignore[operator]
    # A TTFT below the prompt's own prefill time is met by no number of replicas.
    tight = plan_query(env, prompt_tokens=4000, ttft_p99=0.001)
    assert not tight["feasible"] and tight["replicas"] is None


def test_lmaas_plan_prints_the_plan_and_refuses_what_cannot_be_met(env: Env) -> None:
    args = ["plan", "--model", MODEL, "--rps", "0.05", "--prompt-tokens", "64"]
    out = cli(env.home, *args, "--output-tokens", "8", "--json", key=env.admin, url=env.server.url)
    assert json.loads(out)["replicas"] == 1
    table = cli(env.home, *args, "--output-tokens", "8", key=env.admin, url=env.server.url)
    assert "1 replica(s)" in table
    # More than this machine serves: its own candidates are saturated (times unbounded).
    heavy = ["plan", "--model", MODEL, "--rps", "50", "--prompt-tokens", "64"]
    crowd = cli(env.home, *heavy, "--output-tokens", "8", key=env.admin, url=env.server.url)
    assert "saturated" in crowd and "unbounded" in crowd and "replica(s) of" in crowd
    done = subprocess.run(
        [sys.executable, "-m", "lmaas", *args, "--output-tokens", "8", "--ttft-p99", "0.0001"],
        capture_output=True,
        text=True,
        env={**os.environ, "LMAAS_HOME": str(env.home), "LMAAS_API_KEY": env.admin,
             "LMAAS_URL": env.server.url},
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "not feasible" in done.stdout, done


@pytest.mark.parametrize(
    "query",
    [
        "rps=0&prompt_tokens=10&output_tokens=10",
        "rps=1&prompt_tokens=0&output_tokens=10",
        "rps=1&prompt_tokens=10&output_tokens=10&utilisation=2",
        "rps=nan&prompt_tokens=10&output_tokens=10",
        "prompt_tokens=10&output_tokens=10",
    ],
)
def test_bad_plan_queries_are_400s(env: Env, query: str) -> None:
    r = env.get(f"/admin/plan?model={MODEL}&{query}", env.admin)
    assert r.status_code == 400, r.text
    assert "error" in r.json()


def test_a_bad_profile_is_refused(env: Env) -> None:
    d = env.get(f"/admin/deployments/{MODEL}", env.admin).json()
    path = f"/admin/models/{d['model']}/versions/{d['version']}/profile"
    good = {
        "threads": 2, "cores": 2, "prefill_tokens_per_s": 100.0,
        "decode_tokens_per_s": {"1": 10.0}, "memory_bytes": 1, "max_num_seqs": 8,
    }  # fmt: skip
    for bad in (
        {**good, "decode_tokens_per_s": {"0": 1.0}},
        {**good, "decode_tokens_per_s": {"1": -1.0}},
        {**good, "threads": 0},
        {**good, "path": "/etc/passwd"},
    ):
        r = env.req("PUT", path, env.admin, json=bad)
        assert r.status_code == 400, (bad, r.text)
    assert env.req("PUT", path, env.user, json=good).status_code in (401, 403)
    assert (
        env.req("PUT", "/admin/models/nope/versions/1/profile", env.admin, json=good).status_code
        == 404
    )
