"""Useful output at overload (issue 10 item 11), against a real server and model.

The model gets 4 sequence slots. Its capacity (completed requests per second) is measured with
closed-loop clients, which also lets the workers' token rate be measured. Then requests arrive
at twice that rate, each with a client deadline (``X-Lmaas-Deadline``) that the client also
enforces by giving up. Admission must keep what it accepts finishable: most accepted requests
finish in time, and the rest are refused at once with a Retry-After, not after a long wait.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

SLOTS = 4
TOKENS = 12
DEADLINE = 4.0
DURATION = 8.0
RESERVED = f'lmaas_admission_reserved_sequences{{model="{MODEL}"}}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = Path(tmp_path_factory.mktemp("lmaas-overload"))
    config = home / "config.yaml"
    engine = {"context_size": 2048, "max_num_seqs": SLOTS}
    config.write_text(json.dumps({"models": [{"name": MODEL, "engine": engine}]}))  # YAML ⊇ JSON
    proc = ServerProcess(home, "--config", str(config))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


BODY = {
    "model": MODEL,
    "prompt": "Once upon a time",
    "max_tokens": TOKENS,
    "temperature": 0.8,
    "ignore_eos": True,
}


@dataclass
class Outcome:
    status: int  # 0: the client gave up at its deadline
    seconds: float
    retry_after: int | None = None


async def send(client: httpx.AsyncClient, deadline: float | None) -> Outcome:
    headers = {"X-Lmaas-Deadline": str(deadline)} if deadline else {}
    t0 = time.monotonic()
    try:
        r = await client.post(
            "/v1/completions", json=BODY, headers=headers, timeout=deadline or 120
        )
    except httpx.TimeoutException:
        return Outcome(0, time.monotonic() - t0)
    retry = r.headers.get("retry-after")
    return Outcome(r.status_code, time.monotonic() - t0, int(retry) if retry else None)


async def measure_capacity(client: httpx.AsyncClient, seconds: float) -> float:
    done = 0
    end = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < end:
            o = await send(client, None)
            assert o.status == 200
            done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(2 * SLOTS)))
    return done / (time.monotonic() - t0)


async def test_at_twice_capacity_accepted_requests_finish_and_the_rest_are_refused_up_front(
    server: ServerProcess,
) -> None:
    limits = httpx.Limits(max_connections=500)
    async with httpx.AsyncClient(base_url=server.url, limits=limits) as client:
        capacity = await measure_capacity(client, 4.0)
        rate = 2 * capacity
        rng = random.Random(3)
        tasks = []
        end = time.monotonic() + DURATION
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(send(client, DEADLINE)))
            await asyncio.sleep(rng.expovariate(rate))
        outcomes = await asyncio.gather(*tasks)

    refused = [o for o in outcomes if o.status == 429]
    accepted = [o for o in outcomes if o.status != 429]
    in_time = [o for o in accepted if o.status == 200 and o.seconds <= DEADLINE]
    print(
        f"\ncapacity {capacity:.2f} req/s; offered {len(outcomes)} at {rate:.2f} req/s: "
        f"{len(refused)} refused, {len(accepted)} accepted, {len(in_time)} in time"
    )
    assert all(o.status in (200, 429, 0) for o in outcomes), {o.status for o in outcomes}
    # Twice the capacity for DURATION seconds cannot all fit in DURATION + DEADLINE.
    assert refused, "nothing was refused at twice the capacity"
    assert len(in_time) >= 0.8 * len(accepted)
    # Refused up front: at once, with a delay to come back after.
    assert max(o.seconds for o in refused) < 1.0
    assert all(o.retry_after is not None and o.retry_after >= 1 for o in refused)

    # Every reservation ended with its request, however it ended (in time, late and
    # abandoned by its client, or refused): nothing leaks into later estimates.
    def reserved() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        line = next(x for x in text.splitlines() if x.startswith(RESERVED))
        return float(line.rsplit(" ", 1)[1])

    wait_until(lambda: reserved() == 0, 30, what="reservations to end")
