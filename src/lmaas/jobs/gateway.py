"""The runner's client of the gateway it belongs to: the same OpenAI endpoints users call.

Going through HTTP on loopback, every line of a job passes the same admission, scheduler,
request records and metrics as interactive traffic. Requests carry the runner token (made
by the gateway, accepted only from this machine) and the id of the key that owns the job,
as which the gateway treats them.
"""

from __future__ import annotations

import asyncio
import json
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
