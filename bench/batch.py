"""A batch against the same requests sent interactively, and an interactive user during a batch.

1. Interactive: ``--requests`` chat completions (``--max-tokens`` each, end-of-text banned so
   every one generates exactly that many) sent by a client at 16 concurrent streams.
2. Batch: the same requests as a JSONL file through ``/v1/files`` and ``/v1/batches``, timed
   from creation to ``completed`` (the runner sends them through the gateway at batch
   priority, 16 at a time).
3. Interactive TTFT for a single user (an 8-token streamed chat every 0.5 s, a new question
   each time): idle, then while a second copy of the batch runs.

Targets of issue 11: batch throughput >= 0.9x the interactive figure, and the single user's TTFT
p50 during the batch <= 2x its idle value.

    python bench/batch.py --requests 128 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import MODEL, eog_bias, model_path, start_lmaas

QUESTION = "Write a short story about a lighthouse keeper."

# The single user asks something new each time, as a person chatting does: only the chat
# template's opening (its default system prompt) is shared with earlier requests, so the
# prefix cache saves that part and the question itself is prefilled (--user-same-question
# repeats the batch's question instead: then the whole prompt is cached).
USER_TOPICS = [
    "tides",
    "volcanoes",
    "bread",
    "bees",
    "glaciers",
    "comets",
    "trains",
    "maps",
    "clocks",
    "owls",
    "rivers",
    "deserts",
]


def user_question(k: int) -> str:
    topic = USER_TOPICS[k % len(USER_TOPICS)]
    return f"Question {k}: tell me one surprising fact about {topic}, in a sentence."


def chat_body(
    max_tokens: int, bias: dict[str, float], stream: bool = False, question: str = QUESTION
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "logit_bias": bias,
    }
    if stream:
        body["stream"] = True
    return body


async def interactive(base: str, n: int, max_tokens: int, bias: dict[str, float]) -> float:
    """Completion tokens per second for ``n`` requests at 16 concurrent streams."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    tokens = 0
    async with httpx.AsyncClient(base_url=base, timeout=600) as c:

        async def client() -> None:
            nonlocal tokens
            while not queue.empty():
                queue.get_nowait()
                r = await c.post("/v1/chat/completions", json=chat_body(max_tokens, bias))
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]

        t0 = time.monotonic()
        await asyncio.gather(*(client() for _ in range(16)))
        return tokens / (time.monotonic() - t0)


def batch_file(n: int, max_tokens: int, bias: dict[str, float]) -> bytes:
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": chat_body(max_tokens, bias),
        }
        for i in range(n)
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def run_batch(c: httpx.AsyncClient, file_id: str) -> tuple[float, dict[str, Any]]:
    """Seconds from creating a batch to its end, and the batch."""
    t0 = time.monotonic()
    r = await c.post(
        "/v1/batches",
        json={
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    r.raise_for_status()
    batch = r.json()
    while batch["status"] not in ("completed", "failed", "cancelled", "expired"):
        await asyncio.sleep(0.5)
        batch = (await c.get(f"/v1/batches/{batch['id']}")).json()
    return time.monotonic() - t0, batch


# The single user's requests reuse the prefix cache unless --user-no-cache (then every request
# prefills its whole prompt, idle and during the batch alike).
USER_EXTRA: dict[str, Any] = {}
USER_ASKED = [0]  # how many questions the single user has asked
SAME_QUESTION = [False]


async def ttft(c: httpx.AsyncClient, bias: dict[str, float]) -> float:
    t0 = time.monotonic()
    seen = []
    USER_ASKED[0] += 1
    question = QUESTION if SAME_QUESTION[0] else user_question(USER_ASKED[0])
    body = {**chat_body(8, bias, True, question), **USER_EXTRA}
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"content":""' not in line:
                return time.monotonic() - t0
            seen.append(line)
    raise RuntimeError(f"no token: {r.status_code} {seen[:4]}")


async def single_user(
    c: httpx.AsyncClient, bias: dict[str, float], until: asyncio.Event
) -> list[float]:
    out = []
    while not until.is_set():
        out.append(await ttft(c, bias))
        await asyncio.sleep(0.5)
    return out


async def measure(base: str, args: argparse.Namespace) -> dict[str, Any]:
    bias = eog_bias(model_path())
    async with httpx.AsyncClient(base_url=base, timeout=600) as c:
        await interactive(base, 16, 8, bias)  # warm-up
        inter = await interactive(base, args.requests, args.max_tokens, bias)
        print(f"interactive, 16 streams: {inter:.1f} tok/s", flush=True)
        if args.interactive_only:
            return {"interactive_tok_s": round(inter, 1)}

        data = batch_file(args.requests, args.max_tokens, bias)
        files = {"file": ("batch.jsonl", data, "application/jsonl")}
        r = await c.post("/v1/files", files=files, data={"purpose": "batch"})
        r.raise_for_status()
        file_id = r.json()["id"]
        idle = [await ttft(c, bias) for _ in range(16)] if args.one_batch else []
        done = asyncio.Event()
        user = asyncio.create_task(single_user(c, bias, done)) if args.one_batch else None
        seconds, batch = await run_batch(c, file_id)
        counts = batch["request_counts"]
        batch_rate = counts["completed"] * args.max_tokens / seconds
        print(f"batch: {batch['status']} {counts} in {seconds:.1f} s: {batch_rate:.1f} tok/s")

        seconds2 = 0.0
        if user is None:  # the single user during a second copy of the batch
            idle = [await ttft(c, bias) for _ in range(16)]
            user = asyncio.create_task(single_user(c, bias, done))
            seconds2, _ = await run_batch(c, file_id)
        done.set()
        during = await user
    result = {
        "interactive_tok_s": round(inter, 1),
        "batch_tok_s": round(batch_rate, 1),
        "batch_vs_interactive": round(batch_rate / inter, 3),
        "batch_seconds": round(seconds, 1),
        "ttft_idle_p50_s": round(statistics.median(idle), 3),
        "ttft_during_batch_p50_s": round(statistics.median(during), 3),
        "ttft_during_batch_n": len(during),
        "second_batch_seconds": round(seconds2, 1),
    }
    result["ttft_ratio"] = round(result["ttft_during_batch_p50_s"] / result["ttft_idle_p50_s"], 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument(
        "--one-batch",
        action="store_true",
        help="measure the single user's TTFT during the timed batch itself (its requests then "
        "compete with the batch's lines, a conservative throughput) instead of a second copy",
    )
    ap.add_argument(
        "--user-no-cache",
        action="store_true",
        help="the single user's requests send cache_prompt: false (no prefix cache), so its "
        "idle TTFT is a full prefill, as it was before prefix caching",
    )
    ap.add_argument(
        "--user-same-question",
        action="store_true",
        help="the single user repeats the batch's question (its whole prompt then cached: an "
        "idle TTFT of one decode step) instead of asking a new question each time",
    )
    ap.add_argument(
        "--interactive-only",
        action="store_true",
        help="only the first phase (the 16 interactive streams), to measure it again",
    )
    args = ap.parse_args()
    SAME_QUESTION[0] = args.user_same_question
    if args.user_no_cache:
        USER_EXTRA["cache_prompt"] = False
    config = {"models": [{"name": MODEL, "path": model_path(), "engine": {"max_num_seqs": 16}}]}
    server = start_lmaas(config)
    try:
        result = asyncio.run(measure(server.url, args))
    finally:
        server.stop()
    print(json.dumps({"args": vars(args), **result}, indent=2))
    if args.interactive_only:
        return
    ok = result["batch_vs_interactive"] >= 0.9
    print(
        f"batch vs interactive: {result['batch_vs_interactive']:.2f}x (target >= 0.9x) "
        f"{'PASS' if ok else 'FAIL'}"
    )
    ok = result["ttft_ratio"] <= 2
    print(
        f"single user's TTFT p50 during the batch: {result['ttft_ratio']:.2f}x idle "
        f"(target <= 2x) {'PASS' if ok else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
