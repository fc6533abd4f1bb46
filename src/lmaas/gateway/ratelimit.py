"""Per-key rate limits: requests and tokens per minute, enforced with the ``limits`` library.

- **Requests** use a moving window: a key with ``rpm=N`` is admitted at most N times in any
  window of ``window_seconds``; the request that would be the N+1th is refused.
- **Tokens** are charged after the response, with the real usage (prompt + completion tokens)
  into a fixed window that starts with the first charge. A request is refused once the window's
  charges reached ``tpm``, so one request may overshoot the budget; the next one waits.

Counters live in memory (one gateway) or, with a Redis URL, in Redis, where several gateways
share one budget per key. Every call is async (``limits.aio``): nothing blocks the event loop.
When the storage cannot be reached, a limited key's request is refused with 503 (its budget
cannot be checked) rather than admitted unmetered; keys without limits are unaffected.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Final

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError

from lmaas.errors import RateLimitExceededError, ServiceUnavailableError
from lmaas.keys import KeyInfo

logger = logging.getLogger(__name__)


class RateLimitStoreUnavailableError(ServiceUnavailableError):
    """The rate-limit storage (Redis) cannot be reached, so a limited key cannot be checked."""

    default_code = "rate_limit_store_unavailable"


DEFAULT_PREFIX: Final = "lmaas-ratelimit"
WINDOW_SECONDS: Final = 60


def format_reset(seconds: float) -> str:
    """OpenAI's duration format for ``x-ratelimit-reset-*``: ``20ms``, ``7s``, ``1m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def redis_storage_uri(url: str) -> str:
    """``redis://…`` as the ``limits`` async storage URI (``async+redis://…``)."""
    return url if url.startswith("async+") else f"async+{url}"


class KeyRateLimiter:
    """Checks and charges the budgets of keys that have ``rpm`` or ``tpm`` set.

    ``storage`` is a ``limits.aio`` storage; :meth:`from_url` builds the memory or Redis one.
    ``clock`` (epoch seconds, the library's own time base) only turns reset times into
    durations.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        window_seconds: int = WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._storage = storage
        self._requests = MovingWindowRateLimiter(storage)
        self._tokens = FixedWindowRateLimiter(storage)
        self._window = window_seconds
        self._clock = clock

    @classmethod
    def from_url(
        cls,
        redis_url: str | None,
        *,
        prefix: str = DEFAULT_PREFIX,
        window_seconds: int = WINDOW_SECONDS,
    ) -> KeyRateLimiter:
        """In memory without ``redis_url``; else in Redis under keys starting with ``prefix``."""
        if redis_url is None:
            return cls(MemoryStorage(), window_seconds=window_seconds)
        storage = RedisStorage(
            redis_storage_uri(redis_url),
            implementation="redispy",
            key_prefix=prefix,
            wrap_exceptions=True,
        )
        return cls(storage, window_seconds=window_seconds)

    @property
    def storage(self) -> Storage:
        return self._storage

    def _item(self, amount: int, kind: str) -> RateLimitItem:
        return RateLimitItemPerSecond(amount, self._window, namespace=kind)

    async def admit(self, key: KeyInfo) -> dict[str, str]:
        """Count one request of ``key`` and return the ``x-ratelimit-*`` headers for its
        response; :class:`RateLimitExceededError` (429, same headers plus ``Retry-After``) when
        the key has no requests or tokens left. A request refused for tokens is not counted.
        :class:`ServiceUnavailableError` (503) when the storage cannot be reached."""
        try:
            return await self._admit(key)
        except StorageError as exc:
            logger.error("rate-limit storage unreachable: %s", type(exc.storage_error).__name__)
            raise RateLimitStoreUnavailableError(
                "the rate-limit store is unreachable; retry shortly", retry_after=2
            ) from exc

    async def _admit(self, key: KeyInfo) -> dict[str, str]:
        headers: dict[str, str] = {}
        refused: tuple[str, float] | None = None
        if key.tpm is not None:
            item = self._item(key.tpm, "tokens")
            stats = await self._tokens.get_window_stats(item, key.id)
            reset = max(0.0, stats.reset_time - self._clock())
            headers.update(_headers("tokens", key.tpm, stats.remaining, reset))
            if stats.remaining <= 0:
                refused = ("tokens", reset)
        if key.rpm is not None:
            item = self._item(key.rpm, "requests")
            admitted = refused is None and await self._requests.hit(item, key.id)
            stats = await self._requests.get_window_stats(item, key.id)
            reset = max(0.0, stats.reset_time - self._clock())
            headers.update(_headers("requests", key.rpm, stats.remaining, reset))
            if refused is None and not admitted:
                refused = ("requests", reset)
        if refused is not None:
            kind, reset = refused
            limit = key.tpm if kind == "tokens" else key.rpm
            raise RateLimitExceededError(
                f"API key {key.id} reached its limit of {limit} {kind} per minute; "
                f"retry in {format_reset(reset)}",
                headers={"Retry-After": str(max(1, math.ceil(reset))), **headers},
            )
        return headers

    async def charge_tokens(self, key: KeyInfo, tokens: int) -> None:
        """Add ``tokens`` of real usage to ``key``'s token window (no-op without ``tpm``)."""
        if key.tpm is None or tokens <= 0:
            return
        await self._tokens.hit(self._item(key.tpm, "tokens"), key.id, cost=tokens)

    async def reset(self) -> None:
        """Forget every counter (in Redis: every key under this limiter's prefix)."""
        await self._storage.reset()


def _headers(kind: str, limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(limit),
        f"x-ratelimit-remaining-{kind}": str(max(0, remaining)),
        f"x-ratelimit-reset-{kind}": format_reset(reset),
    }
