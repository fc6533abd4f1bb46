"""A key made with `lmaas keys create --rpm 3` on a real server whose counters are in Redis:
three requests pass, the fourth within the minute is refused with 429 and the headers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.e2e.admin import new_key
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess
from tests.redis_server import connect, redis_url

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, str, redis.Redis]]:
    url = redis_url()
    client = connect(url)
    home = Path(tmp_path_factory.mktemp("lmaas-home"))
    key = new_key(home, "inference", "--rpm", "3")
    proc = ServerProcess(home, env={"LMAAS_REDIS_URL": url})
    try:
        proc.wait_ready()
        yield proc, key, client
    finally:
        proc.stop()
        # The server's counters: the default prefix, this key's (random) id in every name.
        key_id = key.split("-")[1]
        for name in client.scan_iter(match=f"lmaas-ratelimit*{key_id}*"):
            client.delete(name)
        client.close()


def test_an_rpm_3_key_is_refused_on_its_fourth_request(
    limited: tuple[ServerProcess, str, redis.Redis],
) -> None:
    server, key, client = limited
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for remaining in ("2", "1", "0"):
            r = http.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            assert r.headers["x-ratelimit-remaining-requests"] == remaining
        r = http.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    # The budget lives in Redis (where other gateways would see it), under this key's id.
    key_id = key.split("-")[1]
    assert list(client.scan_iter(match=f"lmaas-ratelimit*{key_id}*"))
