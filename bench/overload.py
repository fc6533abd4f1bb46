"""Goodput at overload: requests finished within the client's deadline, per second.

1. Capacity: ``--slots`` x 2 closed-loop clients send completions for ``--warmup`` seconds;
   capacity is the completed requests per second.
2. For each load factor (1x, 2x, 4x capacity): requests arrive open-loop (Poisson) at that
   multiple of capacity for ``--duration`` seconds. Each client waits at most ``--deadline``
   seconds (then gives up and closes its connection, which aborts the request), and sends its
   deadline in ``X-Lmaas-Deadline`` unless ``--no-deadline-header``.

Two modes make the before/after comparison on the same code:
- ``after`` (default): lmaas as configured (deadline-aware admission, estimated waits bounded
  by ``limits.max_queue_wait``) and the deadline header sent;
- ``before``: ``limits.max_queue_wait`` raised to a day and no header, so only the count bound
  (capacity + ``limits.max_queue``) applies: the admission lmaas had before issue 10 item 11.

Run: ``python bench/overload.py --mode before after`` (about 2 x (warmup + 3 x (duration +
deadline)) seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import MODEL, Server, model_path, start_lmaas  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper. Once upon a time,"


@dataclass
class Outcome:
    status: int  # 200, 429, ... or 0 when the client gave up at its deadline
    seconds: float
    tokens: int = 0


def body(max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "ignore_eos": True,
    }


async def one(
    session: aiohttp.ClientSession, url: str, max_tokens: int, deadline: float, header: bool
) -> Outcome:
    headers = {"X-Lmaas-Deadline": str(deadline)} if header else {}
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(deadline):
            async with session.post(url, json=body(max_tokens), headers=headers) as r:
                data = await r.json(content_type=None)
                tokens = (data.get("usage") or {}).get("completion_tokens", 0) if r.ok else 0
                return Outcome(r.status, time.monotonic() - t0, tokens)
    except TimeoutError:
        return Outcome(0, time.monotonic() - t0)
    except aiohttp.ClientError:
        return Outcome(-1, time.monotonic() - t0)  # counted as neither refused nor in time


async def capacity(base: str, clients: int, max_tokens: int, seconds: float) -> float:
    url = f"{base}/v1/completions"
    done = 0
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:

        async def client() -> None:
            nonlocal done
            while time.monotonic() < end:
                o = await one(s, url, max_tokens, 600, False)
                done += o.status == 200

        t0 = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        return done / (time.monotonic() - t0)


async def open_loop(
    base: str, rate: float, seconds: float, max_tokens: int, deadline: float, header: bool
) -> list[Outcome]:
    url = f"{base}/v1/completions"
    rng = random.Random(7)
    tasks: list[asyncio.Task[Outcome]] = []
    # A connection per request: reusing idle keep-alive connections races with the server
    # closing them (aiohttp's ServerDisconnectedError), which is no verdict on the server.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(one(s, url, max_tokens, deadline, header)))
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks))


def summary(outcomes: list[Outcome], seconds: float, deadline: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == 200 and o.seconds <= deadline]
    refused = [o for o in outcomes if o.status == 429]
    gave_up = [o for o in outcomes if o.status == 0]
    errors = [o for o in outcomes if o.status not in (0, 200, 429)]
    accepted = len(outcomes) - len(refused)
    return {
        "sent": len(outcomes),
        "refused": len(refused),
        "refused_p90_s": (
            round(statistics.quantiles([o.seconds for o in refused], n=10)[-1], 3)
            if len(refused) > 1
            else None
        ),
        "accepted": accepted,
        "in_time": len(ok),
        "late_or_abandoned": len(gave_up),
        "errors": len(errors),
        "in_time_of_accepted": round(len(ok) / accepted, 3) if accepted else None,
        "goodput_rps": round(len(ok) / seconds, 3),
        "latency_p50_s": round(statistics.median([o.seconds for o in ok]), 2) if ok else None,
    }


def serve(mode: str, slots: int) -> Server:
    limits: dict[str, Any] = {"max_queue": 256}
    if mode == "before":
        limits["max_queue_wait"] = 86_400
    engine = {"max_num_seqs": slots}
    return start_lmaas(
        {"models": [{"name": MODEL, "path": model_path(), "engine": engine}]} | {"limits": limits}
    )


async def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    server = serve(mode, args.slots)
    base = server.url
    try:
        cap = await capacity(base, args.slots * 2, args.max_tokens, args.warmup)
        print(f"[{mode}] capacity {cap:.2f} requests/s", flush=True)
        levels: dict[str, Any] = {"capacity_rps": round(cap, 3)}
        for factor in args.factors:
            outcomes = await open_loop(
                base, cap * factor, args.duration, args.max_tokens, args.deadline, mode == "after"
            )
            levels[f"{factor:g}x"] = s = summary(outcomes, args.duration, args.deadline)
            print(f"[{mode}] {factor:g}x: {s}", flush=True)
        return levels
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", nargs="+", default=["before", "after"], choices=["before", "after"])
    p.add_argument("--factors", nargs="+", type=float, default=[1.0, 2.0, 4.0])
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--deadline", type=float, default=60.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=20.0)
    args = p.parse_args()
    results = {mode: asyncio.run(run_mode(mode, args)) for mode in args.mode}
    out = HERE / "results" / f"overload-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"wrote {out}")
    for mode, levels in results.items():
        for factor in args.factors:
            s = levels[f"{factor:g}x"]
            print(
                f"| {mode} | {factor:g}x | {s['sent']} | {s['refused']} | {s['in_time']} | "
                f"{s['late_or_abandoned']} | {s['in_time_of_accepted']} | {s['goodput_rps']} |"
            )


if __name__ == "__main__":
    main()
