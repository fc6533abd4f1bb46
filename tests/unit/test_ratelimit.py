"""The per-key rate limiter over the library's in-memory storage."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from limits.aio.storage import MemoryStorage

from lmaas.config import Settings
from lmaas.errors import RateLimitExceededError
from lmaas.gateway.ratelimit import (
    KeyRateLimiter,
    RateLimitStoreUnavailableError,
    format_reset,
    redis_storage_uri,
)
from lmaas.keys import KeyInfo


def key(key_id: str = "0123456789ab", *, rpm: int | None = None, tpm: int | None = None) -> KeyInfo:
    created = datetime(2026, 11, 29, tzinfo=UTC)
    return KeyInfo(key_id, "", "inference", None, created, None, None, rpm=rpm, tpm=tpm)


def limiter(window_seconds: int = 60) -> KeyRateLimiter:
    return KeyRateLimiter(MemoryStorage(), window_seconds=window_seconds)


async def test_requests_per_minute_refuse_the_fourth_request_with_headers() -> None:
    rl = limiter()
    k = key(rpm=3)
    remaining = [(await rl.admit(k))["x-ratelimit-remaining-requests"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    with pytest.raises(RateLimitExceededError) as refused:
        await rl.admit(k)
    error = refused.value
    assert error.status_code == 429
    assert error.error_type == "rate_limit_error" and error.code == "rate_limit_exceeded"
    assert error.headers["x-ratelimit-limit-requests"] == "3"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(error.headers["Retry-After"]) <= 60
    assert error.headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in error.headers


async def test_each_key_has_its_own_budget() -> None:
    rl = limiter()
    a, b = key("aaaaaaaaaaaa", rpm=1), key("bbbbbbbbbbbb", rpm=1)
    await rl.admit(a)
    with pytest.raises(RateLimitExceededError):
        await rl.admit(a)
    assert (await rl.admit(b))["x-ratelimit-remaining-requests"] == "0"


async def test_a_moving_window_admits_again_once_the_window_has_passed() -> None:
    rl = limiter(window_seconds=1)
    k = key(rpm=2)
    await rl.admit(k)
    await rl.admit(k)
    with pytest.raises(RateLimitExceededError):
        await rl.admit(k)
    deadline = time.monotonic() + 10
    while True:
        try:
            headers = await rl.admit(k)
            break
        except RateLimitExceededError:
            assert time.monotonic() < deadline, "the window never moved on"
            await asyncio.sleep(0.05)
    assert headers["x-ratelimit-remaining-requests"] == "1"


async def test_tokens_are_charged_after_use_and_refuse_the_next_request() -> None:
    rl = limiter()
    k = key(rpm=5, tpm=100)
    headers = await rl.admit(k)
    assert headers["x-ratelimit-limit-tokens"] == "100"
    assert headers["x-ratelimit-remaining-tokens"] == "100"
    await rl.charge_tokens(k, 60)
    assert (await rl.admit(k))["x-ratelimit-remaining-tokens"] == "40"
    await rl.charge_tokens(k, 70)  # the last request may overshoot the budget
    with pytest.raises(RateLimitExceededError) as refused:
        await rl.admit(k)
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "tokens per minute" in refused.value.message
    # A request refused for tokens does not use up one of the key's requests.
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "3"


async def test_a_key_without_limits_is_neither_counted_nor_charged() -> None:
    rl = limiter()
    k = key()
    await rl.charge_tokens(k, 10**6)
    for _ in range(5):
        assert await rl.admit(k) == {}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0ms"), (0.0201, "21ms"), (1.0, "1s"), (6.2, "7s"), (60.0, "1m0s"), (61.5, "1m2s")],
)
def test_reset_durations_use_openais_format(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_redis_urls_become_async_storage_uris() -> None:
    assert redis_storage_uri("redis://h:6379/0") == "async+redis://h:6379/0"
    assert redis_storage_uri("rediss://h/1") == "async+rediss://h/1"


async def test_an_unreachable_redis_refuses_limited_keys_with_503_and_leaves_others_alone() -> None:
    rl = KeyRateLimiter.from_url("redis://127.0.0.1:9/0")  # a closed port
    with pytest.raises(RateLimitStoreUnavailableError) as refused:
        await rl.admit(key(rpm=3))
    assert refused.value.status_code == 503
    assert refused.value.code == "rate_limit_store_unavailable"
    assert refused.value.headers["Retry-After"] == "2"
    assert await rl.admit(key()) == {}


def test_redis_url_setting_names_a_redis_server() -> None:
    assert Settings(redis_url="redis://127.0.0.1:6379/0").redis_url == "redis://127.0.0.1:6379/0"
    with pytest.raises(ValueError, match="redis_url"):
        Settings(redis_url="http://127.0.0.1:6379")
