"""Readiness, metrics access, request records of aborted streams, the shutdown drain and the
admission of large classify requests, in-process against fake engines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from lmaas.config import Limits, MetricsSettings, ModelConfig, Settings
from lmaas.engine.client import EngineHealth, ReplicaHealth
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.keys import KeyStore
from lmaas.protocol.engine import GenerateRequest, ModelInfo, TokenEvent
from lmaas.records.store import RequestRecord
from tests.fakes import FakeEngine
from tests.fakes_tasks import FakeTaskEngine

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
SECRET = "worker exited: /home/ops/.lmaas/secret.sock"


class ScaledToZero(FakeEngine):
    """A deployment with no replica at all (it wants none)."""

    def health(self) -> EngineHealth:
        return EngineHealth(ready=False)


class Failing(FakeEngine):
    """A deployment whose one replica has failed, with an error naming internals."""

    def health(self) -> EngineHealth:
        failed = ReplicaHealth(id="r0", index=0, state="failed", node="n", last_error=SECRET)
        return EngineHealth(ready=False, replicas=[failed])


class Stalling(FakeEngine):
    """Every sequence emits its first token, then waits for ever (until aborted)."""

    def __init__(self, name: str, *, expect: int) -> None:
        super().__init__(name)
        self.expect = expect
        self.stalled = 0
        self.all_stalled = asyncio.Event()  # ``expect`` sequences wait after their first token

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        events = super().generate(request)
        try:
            yield await anext(events)
            self.stalled += 1
            if self.stalled >= self.expect:
                self.all_stalled.set()
            await asyncio.Event().wait()
        finally:
            await events.aclose()


class Recorder:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def record(self, rec: RequestRecord) -> None:
        self.records.append(rec)


def make_app(
    engines: dict[str, Any], keys: KeyStore, **settings: Any
) -> tuple[FastAPI, httpx.AsyncClient]:
    s = Settings(models=[ModelConfig(name=n, path="/fake.gguf") for n in engines], **settings)
    app = create_app(s, engines, auth=Authenticator(keys, bind_host="127.0.0.1"))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    return app, client


@pytest.fixture
async def closing() -> AsyncIterator[list[FastAPI]]:
    apps: list[FastAPI] = []
    yield apps
    for app in apps:
        await app.state.chat_serving.close()


async def test_a_deployment_scaled_to_zero_leaves_the_server_ready(
    keys: KeyStore, closing: list[FastAPI]
) -> None:
    app, client = make_app({"fake": FakeEngine("fake"), "idle": ScaledToZero("idle")}, keys)
    closing.append(app)
    r = await client.get("/ready")
    assert r.status_code == 200, r.text
    assert r.json()["models"]["idle"]["state"] == "scaled_to_zero"
    assert r.json()["models"]["fake"]["state"] == "ready"


async def test_a_failed_deployment_makes_the_server_unready(
    keys: KeyStore, closing: list[FastAPI]
) -> None:
    app, client = make_app({"fake": FakeEngine("fake"), "bad": Failing("bad")}, keys)
    closing.append(app)
    r = await client.get("/ready")
    assert r.status_code == 503 and r.json()["models"]["bad"]["state"] == "not_ready"


async def test_ready_without_an_admin_key_shows_states_only(
    keys: KeyStore, closing: list[FastAPI]
) -> None:
    admin, _ = keys.create("admin")
    user, _ = keys.create("inference")
    app, client = make_app({"bad": Failing("bad")}, keys)
    closing.append(app)
    for headers in ({}, {"Authorization": f"Bearer {user}"}, {"Authorization": "Bearer wrong"}):
        r = await client.get("/ready", headers=headers)
        assert r.status_code == 503
        assert "secret" not in r.text and "last_error" not in r.text and '"node"' not in r.text
        assert r.json()["models"]["bad"]["replicas"] == [{"index": 0, "state": "failed"}]
    full = await client.get("/ready", headers={"Authorization": f"Bearer {admin}"})
    assert full.json()["models"]["bad"]["replicas"][0]["last_error"] == SECRET


async def test_metrics_can_require_a_key(keys: KeyStore, closing: list[FastAPI]) -> None:
    admin, _ = keys.create("admin")
    user, _ = keys.create("inference")
    app, client = make_app(
        {"fake": FakeEngine("fake")}, keys, metrics=MetricsSettings(require_key=True)
    )
    closing.append(app)
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers={"X-API-Key": user})).status_code == 403
    r = await client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and "lmaas_requests_total" in r.text


async def test_metrics_are_open_by_default(keys: KeyStore, closing: list[FastAPI]) -> None:
    keys.create("admin")
    app, client = make_app({"fake": FakeEngine("fake")}, keys)
    closing.append(app)
    assert (await client.get("/metrics")).status_code == 200


class LlamaScorer(FakeTaskEngine):
    """A llama.cpp generation model: scores through prompt logprobs, 4 sequences at once."""

    @property
    def info(self) -> ModelInfo | None:
        info = super().info
        assert info is not None
        info.backend = "llamacpp"
        return info


async def test_classify_at_the_documented_limits_is_served_on_an_idle_server(
    keys: KeyStore, closing: list[FastAPI]
) -> None:
    limits = Limits()
    engine = LlamaScorer("gen", ["generate", "score", "tokenize"])
    app, client = make_app({"gen": engine}, keys)
    closing.append(app)
    body = {
        "model": "gen",
        "input": [f"text {i}" for i in range(limits.max_inputs)],
        "candidate_labels": [f"label{j}" for j in range(limits.max_labels)],
    }
    r = await client.post("/v1/classify", json=body, timeout=120)
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()["data"]) == 256 and len(r.json()["data"][0]["labels"]) == 32


# -- raw ASGI: what httpx's ASGITransport cannot do (leave mid-stream, watch a cut) -----------


class Exchange:
    """One request sent straight to the app: its messages out, a disconnect on demand."""

    def __init__(self, app: FastAPI, body: dict[str, Any]) -> None:
        self.app = app
        self.body = json.dumps(body).encode()
        self.sent: list[dict[str, Any]] = []
        self.first_chunk = asyncio.Event()
        self.leave = asyncio.Event()
        self._delivered = False

    async def receive(self) -> dict[str, Any]:
        if not self._delivered:
            self._delivered = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.first_chunk.set()

    async def run(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", b"t")],
            "client": ("127.0.0.1", 5000),
            "server": ("t", 80),
        }
        await self.app(scope, self.receive, self.send)

    @property
    def status(self) -> int:
        return int(next(m["status"] for m in self.sent if m["type"] == "http.response.start"))

    @property
    def body_text(self) -> str:
        return b"".join(m.get("body", b"") for m in self.sent if "body" in m).decode()


async def test_a_stream_the_client_leaves_is_recorded_cancelled(
    engine: FakeEngine, keys: KeyStore, closing: list[FastAPI]
) -> None:
    recorder = Recorder()
    settings = Settings(models=[ModelConfig(name="fake", path="/fake.gguf")])
    auth = Authenticator(keys, bind_host="127.0.0.1")
    app = create_app(settings, {"fake": engine}, auth=auth, recorder=recorder)  # type: ignore[arg-type]
    closing.append(app)
    engine.hold = asyncio.Event()
    done = Exchange(app, {**CHAT, "stream": True, "max_tokens": 3})
    engine.hold.set()
    await done.run()
    assert [r.status for r in recorder.records] == ["ok"]

    engine.hold = asyncio.Event()
    gone = Exchange(app, {**CHAT, "stream": True, "max_tokens": 50})
    task = asyncio.ensure_future(gone.run())
    engine.hold.set()
    await asyncio.wait_for(gone.first_chunk.wait(), 10)
    gone.leave.set()
    await asyncio.wait_for(task, 10)
    assert "[DONE]" not in gone.body_text
    assert [r.status for r in recorder.records] == ["ok", "cancelled"]
    assert recorder.records[-1].http_status == 200


async def test_the_drain_refuses_new_requests_and_ends_running_ones_cleanly(
    keys: KeyStore, closing: list[FastAPI]
) -> None:
    settings = Settings(
        models=[ModelConfig(name="fake", path="/fake.gguf")], shutdown_drain_seconds=0.05
    )
    engine = Stalling("fake", expect=2)
    app = create_app(settings, {"fake": engine}, auth=Authenticator(keys, bind_host="127.0.0.1"))
    closing.append(app)
    plain = Exchange(app, {**CHAT, "max_tokens": 50})
    stream = Exchange(app, {**CHAT, "stream": True, "max_tokens": 50})
    tasks = asyncio.gather(plain.run(), stream.run())
    await asyncio.wait_for(stream.first_chunk.wait(), 10)  # the stream is under way
    await asyncio.wait_for(engine.all_stalled.wait(), 10)  # and the plain request is running
    app.state.drain.begin()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    late = await client.post("/v1/chat/completions", json=CHAT)  # during the drain
    assert late.status_code == 503 and "retry-after" in late.headers
    assert "shutting down" in late.json()["error"]["message"]
    ready = await client.get("/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert (await client.get("/health")).status_code == 200

    await asyncio.wait_for(tasks, 10)  # cut at the end of the drain
    assert stream.status == 200
    events = [line[6:] for line in stream.body_text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "shutting down" in json.loads(events[-2])["error"]["message"]
    assert plain.status == 503 and "shutting down" in plain.body_text
    assert len(engine.aborted) == 2, (engine.aborted, [r.request_id for r in engine.requests])
