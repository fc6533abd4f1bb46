"""Metrics in-process against fake engines: the endpoint label bounded to known routes, per-key
request counts, finish reasons and request sizes, KV cache and preemptions as the replicas
report them, and OpenMetrics when the scraper asks for it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from lmaas.config import ModelConfig, Settings
from lmaas.engine.client import EngineHealth, ReplicaHealth
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.keys import KeyStore
from tests.fakes import FakeEngine

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi there"}]}


class Reporting(FakeEngine):
    """Two replicas whose KV cache and preemption counts the test sets, as workers report
    them; ``#1`` is still starting."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.replicas = [
            ReplicaHealth(id="a", index=0, state="ready", node="n", kv_capacity=1000),
            ReplicaHealth(id="b", index=1, state="starting", node="n"),
        ]

    def health(self) -> EngineHealth:
        return EngineHealth(ready=True, replicas=self.replicas)


@pytest.fixture
async def app_client(keys: KeyStore) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    engines = {"fake": Reporting("fake")}
    s = Settings(models=[ModelConfig(name=n, path="/fake.gguf") for n in engines])
    app = create_app(s, engines, auth=Authenticator(keys, bind_host="127.0.0.1"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield app, client
    await app.state.chat_serving.close()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called ``name``, keyed by their sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text, name).get(tuple(sorted(labels.items())))


async def scrape(client: httpx.AsyncClient) -> str:
    r = await client.get("/metrics")
    assert r.status_code == 200
    return r.text


async def test_the_endpoint_label_takes_route_templates_and_other_for_the_rest(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = app_client
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    mistyped = await client.post(  # refused before routing: still labelled by its route
        "/v1/completions", content=b"{}", headers={"content-type": "text/plain"}
    )
    assert mistyped.status_code == 415
    for _ in range(40):
        path = f"/v1/{secrets.token_hex(6)}/{secrets.token_hex(3)}"
        assert (await client.post(path, json={})).status_code == 404
    series = samples(await scrape(client), "lmaas_requests_total")
    endpoints = {dict(labels)["endpoint"] for labels in series}
    assert endpoints == {"/v1/chat/completions", "/v1/completions", "other"}
    assert endpoints - {"other"} <= set(app.openapi()["paths"])
    assert value(
        await scrape(client),
        "lmaas_requests_total",
        model="unknown",
        endpoint="other",
        status="404",
    ) == pytest.approx(40)
    # 40 random paths made one series, not 40
    assert len(series) == 3


async def test_requests_are_counted_per_key_by_id_and_name_never_the_secret(
    keys: KeyStore, app_client: tuple[FastAPI, httpx.AsyncClient]
) -> None:
    _, client = app_client
    alice, alice_info = keys.create("inference", "alice")
    bob, bob_info = keys.create("inference", "bob")
    for key, times in ((alice, 3), (bob, 1)):
        for _ in range(times):
            r = await client.post(
                "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
            )
            assert r.status_code == 200, r.text
    bad = await client.post(
        "/v1/chat/completions", json={"model": "fake"}, headers={"Authorization": f"Bearer {bob}"}
    )
    assert bad.status_code == 400
    text = await scrape(client)
    name = "lmaas_key_requests_total"
    assert value(text, name, key_id=alice_info.id, key_name="alice", status_class="2xx") == 3
    assert value(text, name, key_id=bob_info.id, key_name="bob", status_class="2xx") == 1
    assert value(text, name, key_id=bob_info.id, key_name="bob", status_class="4xx") == 1
    assert alice not in text and bob not in text


async def test_finish_reasons_and_request_sizes(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = app_client
    r = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3, "n": 2})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    r = await client.post("/v1/completions", json={"model": "fake", "prompt": "a b", "stop": "w1"})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "stop", r.text
    text = await scrape(client)
    reasons = "lmaas_request_finish_reasons_total"
    assert value(text, reasons, model="fake", reason="length") == 2
    assert value(text, reasons, model="fake", reason="stop") == 1
    assert value(text, "lmaas_request_generation_tokens_count", model="fake") == 2
    prompts = samples(text, "lmaas_request_prompt_tokens_bucket")
    assert prompts[(("le", "1.0"), ("model", "fake"))] == 0
    assert prompts[(("le", "+Inf"), ("model", "fake"))] == 2
    total = value(text, "lmaas_request_prompt_tokens_sum", model="fake")
    assert total == usage["prompt_tokens"] + 2  # "a b": two tokens to the fake


async def test_kv_cache_gauges_and_preemptions_follow_what_replicas_report(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = app_client
    engine: Reporting = app.state.engines["fake"]
    ready = engine.replicas[0]
    ready.kv_used, ready.preemptions = 250, {"kv_cache": 2, "fairness": 0}
    text = await scrape(client)
    assert value(text, "lmaas_kv_cache_usage_ratio", model="fake", replica="0") == 0.25
    assert value(text, "lmaas_kv_cache_used_cells", model="fake", replica="0") == 250
    assert value(text, "lmaas_kv_cache_capacity_cells", model="fake", replica="0") == 1000
    assert value(text, "lmaas_kv_cache_usage_ratio", model="fake", replica="1") is None
    pre = "lmaas_preemptions_total"
    assert value(text, pre, model="fake", reason="kv_cache") == 2
    assert value(text, pre, model="fake", reason="fairness") == 0
    ready.preemptions = {"kv_cache": 5, "fairness": 1}
    text = await scrape(client)
    assert value(text, pre, model="fake", reason="kv_cache") == 5
    assert value(text, pre, model="fake", reason="fairness") == 1
    # The worker restarted: it counts from zero again, and the counter only goes up.
    ready.preemptions = {"kv_cache": 1, "fairness": 0}
    text = await scrape(client)
    assert value(text, pre, model="fake", reason="kv_cache") == 6
    # A replica that is no longer ready leaves no KV series behind.
    ready.state = "failed"
    text = await scrape(client)
    assert value(text, "lmaas_kv_cache_usage_ratio", model="fake", replica="0") is None


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, "text/plain; version=0.0.4"),
        ("application/openmetrics-text; version=1.0.0", "application/openmetrics-text"),
        ("application/openmetrics-text;version=1.0.0,text/plain;q=0.5", "application/openmetrics"),
    ],
)
async def test_openmetrics_when_the_accept_header_asks(
    app_client: tuple[FastAPI, httpx.AsyncClient], accept: str | None, content_type: str
) -> None:
    _, client = app_client
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    headers: dict[str, Any] = {"Accept": accept} if accept else {}
    r = await client.get("/metrics", headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(content_type)
    openmetrics = content_type.startswith("application/openmetrics")
    assert r.text.rstrip().endswith("# EOF") == openmetrics
    if openmetrics:  # counters keep their _total sample, and the family is named without it
        assert "# TYPE lmaas_requests counter" in r.text
        assert 'lmaas_requests_total{endpoint="/v1/chat/completions"' in r.text
