"""Streaming load generator for OpenAI-compatible /v1/completions endpoints.

Metrics follow ../BENCHMARKS.md (vLLM's definitions): TTFT, TPOT, ITL, E2E, throughput.
Each request streams; tokens are counted from the `usage` block when the server sends one,
else from the number of non-empty chunks. Both /v1/completions (`text`) and
/v1/chat/completions (`delta.content`) streams are read.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PROMPTS = [
    f"Write a short story about {topic}. Once upon a time,"
    for topic in (
        "a lighthouse keeper",
        "a lost robot",
        "the first snow",
        "a river town",
        "an old map",
        "a clockmaker",
        "a brave mouse",
        "the northern lights",
        "a secret garden",
        "a desert caravan",
        "a talking cat",
        "a broken violin",
        "a mountain village",
        "a night train",
        "a paper boat",
        "a forgotten library",
        "a tiny dragon",
        "an island",
        "a kite festival",
        "a glass bridge",
        "a sleepy volcano",
        "the moon market",
        "a winter fox",
        "a silver key",
        "a hidden valley",
        "a lonely whale",
        "a jazz band",
        "a garden gnome",
        "a sandcastle",
        "a pirate parrot",
        "a space station",
        "a bakery",
    )
]


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    output_tokens: int = 0
    itls: list[float] = field(default_factory=list)
    error: str = ""
    text: str = ""
    cached_tokens: int | None = None  # prompt tokens the server says it reused from a cache

    @property
    def tpot(self) -> float | None:
        if self.output_tokens <= 1:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def cached_prompt_tokens(chunk: dict[str, Any]) -> int | None:
    """OpenAI's ``usage.prompt_tokens_details.cached_tokens``, else llama-server's ``cache_n``."""
    details = (chunk.get("usage") or {}).get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        return int(details["cached_tokens"])
    timings = chunk.get("timings") or {}
    return int(timings["cache_n"]) if timings.get("cache_n") is not None else None


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def one_request(
    session: aiohttp.ClientSession, url: str, payload: dict[str, Any]
) -> RequestResult:
    start = time.perf_counter()
    first: float | None = None
    last = start
    chunks = 0
    usage_tokens: int | None = None
    cached: int | None = None
    pieces: list[str] = []
    itls: list[float] = []
    try:
        async with session.post(url, json=payload) as r:
            if r.status != 200:
                body = await r.read()
                return RequestResult(ok=False, error=f"{r.status} {body[:200]!r}")
            async for raw in r.content:
                line = raw.decode().rstrip("\r\n")
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    usage_tokens = int(data["usage"]["completion_tokens"])
                if "usage" in data or "timings" in data:
                    cached = cached_prompt_tokens(data) if cached is None else cached
                choice = (data.get("choices") or [{}])[0]
                piece = choice.get("text") or (choice.get("delta") or {}).get("content")
                if not piece:
                    continue
                pieces.append(piece)
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    itls.append(now - last)
                last = now
                chunks += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        return RequestResult(ok=False, error=repr(exc))
    if first is None:
        return RequestResult(ok=False, error="no output")
    return RequestResult(
        ok=True,
        ttft=first - start,
        e2e=last - start,
        output_tokens=usage_tokens if usage_tokens is not None else chunks,
        itls=itls,
        text="".join(pieces),
        cached_tokens=cached,
    )


async def run_level(
    base_url: str,
    model: str,
    concurrency: int,
    num_requests: int,
    max_tokens: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """``num_requests`` requests, at most ``concurrency`` in flight; returns summary stats."""
    url = f"{base_url}/v1/completions"
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def task(i: int) -> RequestResult:
            async with sem:
                payload = {
                    "model": model,
                    "prompt": PROMPTS[i % len(PROMPTS)],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    **extra,
                }
                return await one_request(client, url, payload)

        start = time.perf_counter()
        results = await asyncio.gather(*(task(i) for i in range(num_requests)))
        wall = time.perf_counter() - start
    return summarize(results, wall, concurrency)


def summarize(results: list[RequestResult], wall: float, concurrency: int) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft for r in ok]
    tpots = [t for r in ok if (t := r.tpot) is not None]
    itls = [x for r in ok for x in r.itls]
    tokens = sum(r.output_tokens for r in ok)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:3],
        "wall_s": wall,
        "output_tokens": tokens,
        "output_tok_s": tokens / wall if wall > 0 else 0.0,
        "request_s": len(ok) / wall if wall > 0 else 0.0,
        "ttft_p50": percentile(ttfts, 50),
        "ttft_p99": percentile(ttfts, 99),
        "tpot_p50": percentile(tpots, 50),
        "itl_p50": percentile(itls, 50),
        "itl_p99": percentile(itls, 99),
        "e2e_p50": percentile([r.e2e for r in ok], 50),
        "mean_tokens": statistics.mean([r.output_tokens for r in ok]) if ok else 0,
    }
