"""Per-key rate limits through the app (fake engine): in memory, and shared through Redis by
two app instances; the key store's limits and `lmaas keys create/update --rpm/--tpm`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import typer
from fastapi import FastAPI
from typer.testing import CliRunner

from lmaas.cli.keys import keys_app
from lmaas.config import ModelConfig, Settings
from lmaas.errors import InvalidRequestError
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.gateway.ratelimit import KeyRateLimiter
from lmaas.keys import KeyStore
from tests.fakes import FakeEngine
from tests.redis_server import scratch_prefix

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
REQUEST_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)
TOKEN_HEADERS = (
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


@contextlib.asynccontextmanager
async def serving(keys: KeyStore, limiter: KeyRateLimiter) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(models=[ModelConfig(name="fake", path="/fake.gguf")])
    auth = Authenticator(keys, bind_host="127.0.0.1", limiter=limiter)
    app: FastAPI = create_app(settings, {"fake": FakeEngine("fake")}, auth=auth)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await app.state.chat_serving.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_refused(response: httpx.Response, kind: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert f"{kind} per minute" in error["message"]
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers[f"x-ratelimit-remaining-{kind}"] == "0"


async def test_an_rpm_3_key_gets_429_on_its_fourth_request(keys: KeyStore) -> None:
    limited, _ = keys.create("inference", "limited", rpm=3)
    other, _ = keys.create("inference", "unlimited")
    async with serving(keys, KeyRateLimiter.from_url(None)) as client:
        remaining = []
        for _ in range(3):
            r = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(limited))
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            assert r.headers["x-ratelimit-reset-requests"].endswith("s")
            assert not any(name in r.headers for name in TOKEN_HEADERS)
            remaining.append(r.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        r = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(limited))
        assert_refused(r, "requests")
        assert all(name in r.headers for name in REQUEST_HEADERS)
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        # A key without limits is not counted and gets no rate-limit headers.
        for _ in range(5):
            r = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(other))
            assert r.status_code == 200, r.text
            assert "x-ratelimit-limit-requests" not in r.headers


async def test_tokens_used_count_and_refuse_the_next_request(keys: KeyStore) -> None:
    plaintext, _ = keys.create("inference", "tokens", tpm=3)
    async with serving(keys, KeyRateLimiter.from_url(None)) as client:
        r = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(plaintext))
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-remaining-tokens"] == "3"
        usage = r.json()["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] > 3
        r = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(plaintext))
        assert_refused(r, "tokens")
        assert r.headers["x-ratelimit-limit-tokens"] == "3"


async def test_a_stream_carries_the_headers_and_its_tokens_are_charged(keys: KeyStore) -> None:
    plaintext, _ = keys.create("inference", "stream", rpm=10, tpm=3)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with serving(keys, KeyRateLimiter.from_url(None)) as client:
        r = await client.post("/v1/chat/completions", json=body, headers=bearer(plaintext))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-ratelimit-remaining-requests"] == "9"
        assert r.headers["x-ratelimit-remaining-tokens"] == "3"
        assert r.text.rstrip().endswith("data: [DONE]")
        r = await client.post("/v1/chat/completions", json=body, headers=bearer(plaintext))
        assert_refused(r, "tokens")


async def test_two_gateways_share_one_budget_through_redis(keys: KeyStore) -> None:
    with scratch_prefix() as (url, prefix):
        plaintext, info = keys.create("inference", "shared", rpm=3)
        first = KeyRateLimiter.from_url(url, prefix=prefix)
        second = KeyRateLimiter.from_url(url, prefix=prefix)
        async with serving(keys, first) as a, serving(keys, second) as b:
            statuses = []
            for client in (a, b, a, b):
                r = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(plaintext))
                statuses.append(r.status_code)
            assert statuses == [200, 200, 200, 429]
            assert_refused(r, "requests")
            r = await a.post("/v1/chat/completions", json=CHAT, headers=bearer(plaintext))
            assert_refused(r, "requests")
        client = redis.Redis.from_url(url)
        try:
            stored = [name.decode() for name in client.scan_iter(match=f"{prefix}*")]
        finally:
            client.close()
        assert stored and all(info.id in name for name in stored)


def test_key_store_keeps_and_changes_limits(keys: KeyStore) -> None:
    _, info = keys.create("inference", "app", rpm=10, tpm=1000)
    assert (info.rpm, info.tpm) == (10, 1000)
    assert keys.get(info.id).rpm == 10
    changed = keys.set_limits(info.id, rpm=None, tpm=5)
    assert (changed.rpm, changed.tpm) == (None, 5)
    assert (keys.get(info.id).rpm, keys.get(info.id).tpm) == (None, 5)
    for bad in (0, -1, 2**31, True, 1.5):
        with pytest.raises(InvalidRequestError):
            keys.create("inference", rpm=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError):
            keys.set_limits(info.id, rpm=None, tpm=bad)  # type: ignore[arg-type]


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {"LMAAS_HOME": str(tmp_path / "home"), "LMAAS_DATABASE_URL": ""}


def _run(env: dict[str, str], *args: Any) -> Any:
    root = typer.Typer()
    root.add_typer(keys_app, name="keys")
    result = CliRunner().invoke(root, ["keys", *map(str, args)], env=env)
    assert result.exit_code == 0, result.output
    return result


def test_cli_create_and_update_limits(cli_env: dict[str, str]) -> None:
    created = _run(cli_env, "create", "--scope", "inference", "--rpm", 3, "--tpm", 500)
    key_id = created.stdout.strip().split("-")[1]
    header, row = _run(cli_env, "ls").stdout.splitlines()
    assert header.split()[4:6] == ["RPM", "TPM"]
    assert row.split()[:6] == [key_id, "-", "inference", "*", "3", "500"]

    updated = _run(cli_env, "update", key_id, "--rpm", 7)
    assert f"key {key_id}: rpm 7, tpm 500" in updated.stderr  # --tpm left out: unchanged
    updated = _run(cli_env, "update", key_id, "--tpm", 0)
    assert f"key {key_id}: rpm 7, tpm -" in updated.stderr  # 0 removes the limit
    row = _run(cli_env, "ls").stdout.splitlines()[1]
    assert row.split()[4:6] == ["7", "-"]
