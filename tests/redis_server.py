"""Redis for the tests: where it is, whether its absence fails or skips, and a unique key
prefix per test whose keys are deleted afterwards.

The server is ``LMAAS_TEST_REDIS_URL`` (default: ``redis://127.0.0.1:6379/0``). Redis backs the
shared rate limits, so in CI (``CI=true``, or ``LMAAS_REQUIRE_REDIS=1`` anywhere) an unreachable
server fails the tests that need it; elsewhere they are skipped with the reason. To check that
CI really fails: ``CI=true LMAAS_TEST_REDIS_URL=redis://127.0.0.1:9/0``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest
import redis

REDIS_URL_ENV = "LMAAS_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL


def redis_required(environ: Mapping[str, str] = os.environ) -> bool:
    """True in CI (``CI`` set to true/1/yes) or with ``LMAAS_REQUIRE_REDIS=1``."""
    in_ci = environ.get("CI", "").strip().lower() in ("true", "1", "yes")
    return in_ci or environ.get("LMAAS_REQUIRE_REDIS") == "1"


def connect(url: str) -> redis.Redis:
    """A client on the test server, checked with PING; an unreachable server fails the test
    when :func:`redis_required`, else skips it, naming the URL and the error."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.ping()
        return client
    except redis.RedisError as exc:
        reason = f"Redis at {url} is unreachable: {exc}"
    client.close()
    if redis_required():
        pytest.fail(f"{reason} (required: CI or LMAAS_REQUIRE_REDIS=1)", pytrace=False)
    pytest.skip(f"{reason} (set {REDIS_URL_ENV} to another server)")


def delete_prefixed(client: redis.Redis, prefix: str) -> int:
    """Delete every key starting with ``prefix``; how many there were."""
    names = list(client.scan_iter(match=f"{prefix}*", count=500))
    return int(client.delete(*names)) if names else 0


@contextmanager
def scratch_prefix() -> Iterator[tuple[str, str]]:
    """``(url, prefix)``: a reachable Redis and a key prefix no other test uses; every key
    under the prefix is deleted after the test."""
    url = redis_url()
    client = connect(url)
    prefix = f"lmaas-test-{uuid.uuid4().hex[:16]}"
    try:
        yield url, prefix
    finally:
        delete_prefixed(client, prefix)
        client.close()
