"""A request record for tests: record ``n`` arrives ``n`` seconds after ``T0``."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from lmaas.records.store import RequestRecord

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def make_record(n: int = 0, **changes: Any) -> RequestRecord:
    record = RequestRecord(
        request_id=f"req-{n}",
        received_at=T0 + timedelta(seconds=n),
        endpoint="chat",
        model="smollm2",
        version=1,
        client_ip="127.0.0.1",
        api_key_id="0123456789ab",
        params={"temperature": 0.7, "max_tokens": 16, "stop": ["\n"]},
        prompt=None,
        status="ok",
        http_status=200,
        queue_time_ms=1.5,
        ttft_ms=20.25,
        latency_ms=120.5,
        prompt_tokens=12,
        completion_tokens=16,
        error=None,
    )
    return replace(record, **changes)
