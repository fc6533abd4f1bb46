"""The autoscaler against a real server and model, with short delays: a config deployment
scales from 1 to 2 replicas under a step load of concurrent streaming requests and back to 1
when idle, with no failed request, each decision an event with its reason and a metric; a
deployment made through the API with min_replicas 0 holds a request while its first replica
starts (no 503) and goes back to zero when idle."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.admin import Env, cli, new_key
from tests.e2e.conftest import MODEL
from tests.e2e.load import Outcomes, deployment, keep_streaming, metric, settled, stream_chat
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

STREAMS = 6  # concurrent streams: 3 per replica with target_ongoing_requests 2 wants both
AUTO = (
    "{min_replicas: 1, max_replicas: 2, target_ongoing_requests: 2, upscale_delay_s: 1, "
    "downscale_delay_s: 2, look_back_period_s: 1}"
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = tmp_path_factory.mktemp("autoscale-home")
    admin = new_key(home, "admin")
    config = home / "autoscale.yaml"
    config.write_text(
        "autoscaler: {interval_s: 0.25}\n"
        "models:\n"
        f"  - name: {MODEL}\n"
        f"    engine: {{threads: 1, context_size: 1024}}\n"
        f"    autoscaling: {AUTO}\n"
    )
    server = ServerProcess(home, "--config", str(config))
    try:
        server.wait_ready()
        yield Env(home, server, admin, admin)
    finally:
        server.stop()


def test_a_step_load_scales_up_to_two_replicas_and_back_down_when_idle(env: Env) -> None:
    d = wait_until(lambda: settled(env, MODEL, 1), 180, 0.2, "one ready replica")
    assert d["autoscaling"]["config"]["max_replicas"] == 2 and d["autoscaling"]["events"] == []

    outcomes, stop = Outcomes(), threading.Event()
    with ThreadPoolExecutor(STREAMS) as pool:
        streams = [pool.submit(keep_streaming, env, MODEL, outcomes, stop) for _ in range(STREAMS)]
        try:
            up = wait_until(lambda: settled(env, MODEL, 2), 180, 0.2, "a second ready replica")
            # The new replica takes its share of the streams that keep coming.
            wait_until(
                lambda: any(
                    r["index"] != 0 and r["outstanding"] > 0
                    for r in deployment(env, MODEL)["replica_status"]
                ),
                60,
                0.05,
                "the new replica to serve",
            )
        finally:
            stop.set()
            for s in streams:
                s.result()
    (event,) = up["autoscaling"]["events"]
    assert (event["direction"], event["from_replicas"], event["to_replicas"]) == ("up", 1, 2)
    assert "ongoing requests on average" in event["reason"]
    assert "upscale_delay_s 1 s" in event["reason"] and event["ongoing_requests"] >= 3
    assert metric(env, "lmaas_autoscaler_decisions_total", model=MODEL, direction="up") == 1

    # Idle: back to one replica after the downscale delay; the other drains and stops.
    down = wait_until(lambda: settled(env, MODEL, 1), 120, 0.2, "one replica again")
    events = down["autoscaling"]["events"]
    assert [e["direction"] for e in events] == ["up", "down"]
    assert "downscale_delay_s 2 s" in events[-1]["reason"]
    assert metric(env, "lmaas_autoscaler_decisions_total", model=MODEL, direction="down") == 1
    assert metric(env, "lmaas_autoscaler_desired_replicas", model=MODEL) == 1
    wait_until(lambda: len(env.server.worker_pids(MODEL)) == 1, 60, 0.2, "one worker process")
    assert outcomes.failed == [] and outcomes.ok >= STREAMS


def test_scale_from_zero_holds_a_request_during_the_cold_start(env: Env) -> None:
    auto = {
        "min_replicas": 0,
        "max_replicas": 1,
        "downscale_delay_s": 0,
        "look_back_period_s": 1,
    }
    r = env.req(
        "POST",
        "/admin/deployments",
        env.admin,
        json={
            "model": MODEL,
            "name": "cold",
            "engine": {"threads": 1, "context_size": 1024},
            "autoscaling": auto,
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["replicas"] == 0 and r.json()["state"] == "stopped"
    assert env.server.worker_pids("cold") == set()
    assert env.get("/ready").status_code == 200  # a deployment scaled to zero is not unready

    outcomes = Outcomes()
    stream_chat(env, "cold", outcomes, max_tokens=4)  # held while its replica loads
    assert outcomes.failed == [] and outcomes.ok == 1
    event = deployment(env, "cold")["autoscaling"]["events"][0]
    assert event["direction"] == "up" and "arrived at zero replicas (1 held)" in event["reason"]

    wait_until(lambda: deployment(env, "cold")["replicas"] == 0, 60, 0.2, "scale to zero")
    events = deployment(env, "cold")["autoscaling"]["events"]
    assert [e["direction"] for e in events] == ["up", "down"]
    wait_until(lambda: env.server.worker_pids("cold") == set(), 60, 0.2, "its worker to stop")
    assert env.req("DELETE", "/admin/deployments/cold", env.admin).status_code == 204


def test_a_bad_autoscaling_object_is_refused_in_the_openai_envelope(env: Env) -> None:
    r = env.req(
        "POST",
        "/admin/deployments",
        env.admin,
        json={"model": MODEL, "name": "bad", "autoscaling": {"min_replicas": 3, "max_replicas": 2}},
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "autoscaling" and "min_replicas (3) is above" in error["message"]
    r = env.req(
        "PATCH", f"/admin/deployments/{MODEL}", env.admin, json={"replicas": 2}
    )  # autoscaled: replicas are not set by hand
    assert r.status_code == 400 and r.json()["error"]["param"] == "replicas"


def test_lmaas_deploy_takes_the_bounds_as_flags(env: Env) -> None:
    out = cli(
        env.home,
        "deploy",
        MODEL,
        "--name",
        "flex",
        "--min-replicas",
        "1",
        "--max-replicas",
        "2",
        "--upscale-delay",
        "5",
        "--no-wait",
        key=env.admin,
        url=env.server.url,
    )
    assert "(autoscaled 1-2, 2 ongoing per replica)" in out
    config = deployment(env, "flex")["autoscaling"]["config"]
    assert (config["min_replicas"], config["max_replicas"], config["upscale_delay_s"]) == (1, 2, 5)
    assert "(auto 1-2)" in cli(env.home, "ps", key=env.admin, url=env.server.url)
    cli(env.home, "undeploy", "flex", key=env.admin, url=env.server.url)


def test_a_placement_is_refused_on_the_local_kind(env: Env) -> None:
    body = {"model": MODEL, "name": "placed", "placement": {"resources": {"lmaas_large": 1}}}
    r = env.req("POST", "/admin/deployments", env.admin, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "placement" and "cluster.kind local" in error["message"]
    r = env.req(
        "PATCH",
        f"/admin/deployments/{MODEL}",
        env.admin,
        json={"placement": {"label_selector": {"zone": "a"}}},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "placement"
    assert env.get("/admin/deployments/placed", env.admin).status_code == 404
    assert deployment(env, MODEL)["placement"] is None
