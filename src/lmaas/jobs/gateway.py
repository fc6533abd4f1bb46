"""The runner's client of the gateway it belongs to: the same OpenAI endpoints users call.

Going through HTTP on loopback, every line of a job passes the same admission, scheduler,
request records and metrics as interactive traffic. Requests carry the runner token (made
by the gateway, accepted only from this machine) and the id of the key that owns the job,
as which the gateway treats them.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx

from lmaas.protocol.jobs import JOB_OWNER_HEADER

_READY_BACKOFF_MAX: Final = 2.0


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any  # the JSON the gateway answered, or None when it was not JSON
    request_id: str | None
    retry_after: float | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class GatewayClient:
    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self._http = http
        self._token = token

    async def post(
        self, path: str, body: dict[str, Any], *, owner: str | None, request_id: str
    ) -> Reply:
        """POST ``body`` to ``path`` as ``owner``'s request; transport errors
        (``httpx.TransportError``) are the caller's to retry."""
        headers = {
            "Authorization": f"Bearer {self._token}",
            JOB_OWNER_HEADER: owner or "",
            "X-Request-Id": request_id,
        }
        response = await self._http.post(path, json=body, headers=headers)
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = None
        return Reply(
            status=response.status_code,
            body=payload,
            request_id=response.headers.get("x-request-id"),
            retry_after=_seconds(response.headers.get("retry-after")),
        )

    async def wait_ready(self, stop: asyncio.Event) -> bool:
        """Wait until the gateway answers ``/health`` (it starts listening only after its
        start-up); False if ``stop`` was set first."""
        delay = 0.1
        while not stop.is_set():
            try:
                response = await self._http.get("/health", timeout=5.0)
                if response.status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, _READY_BACKOFF_MAX)
        return False


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    overload_seconds: float = 600.0  # how long a request keeps retrying a 429 or 503
    tries: int = 4  # for another 5xx or an unreachable gateway
    backoff_max: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        wait = retry_after if retry_after is not None else 0.5 * 2 ** (attempt - 1)
        return min(wait, self.backoff_max)


class GatewayUnreachable(Exception):
    """The gateway did not answer, ``tries`` times."""


_OVERLOADED: Final = frozenset({429, 503})
_SERVER_ERRORS: Final = frozenset({500, 502, 504})


async def post_retrying(
    gateway: GatewayClient,
    path: str,
    body: dict[str, Any],
    *,
    owner: str | None,
    request_id: str,
    retry: RetryPolicy,
) -> Reply:
    """POST as :meth:`GatewayClient.post`, retrying overload (429, 503) for up to
    ``retry.overload_seconds`` and other server errors or an unreachable gateway up to
    ``retry.tries`` times; the last reply otherwise. Raises :class:`GatewayUnreachable`."""
    overload_until = time.monotonic() + retry.overload_seconds
    attempt = 0
    while True:
        attempt += 1
        rid = request_id + (f".{attempt}" if attempt > 1 else "")
        try:
            reply = await gateway.post(path, body, owner=owner, request_id=rid)
        except httpx.TransportError as exc:
            if attempt >= retry.tries:
                raise GatewayUnreachable(
                    f"the gateway did not answer ({type(exc).__name__})"
                ) from None
            await asyncio.sleep(retry.delay(attempt, None))
            continue
        overloaded = reply.status in _OVERLOADED and time.monotonic() < overload_until
        server_error = reply.status in _SERVER_ERRORS and attempt < retry.tries
        if not (overloaded or server_error):
            return reply
        await asyncio.sleep(retry.delay(attempt, reply.retry_after))
