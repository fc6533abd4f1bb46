"""Beam search throughput: beam width 4 against greedy decoding on the same prompts.

    python bench/beam.py [--width 4] [--max-tokens 32] [--concurrency 1 4] [--reps 2]
                         [--backend llamacpp|transformers]

``--backend transformers`` serves the same GGUF through transformers' GGUF loader (float32
PyTorch) instead of llama.cpp.

One lmaas server; non-streaming /v1/completions; end-of-sequence banned through logit_bias so
every request (and every beam) runs to exactly max-tokens tokens. Modes alternate within each
repetition; medians over repetitions. Reported per mode and concurrency:

- returned tok/s: completion tokens in the responses (one beam per request) per second;
- decoded tok/s: tokens the engine decoded per second (width x returned for beam search);
- latency p50 of one request.

Writes the raw figures to bench/results/beam-<timestamp>.json.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loadgen import PROMPTS  # noqa: E402
from run import MODEL, eog_bias, model_path, start_server  # noqa: E402


async def run_level(
    url: str, body: dict[str, Any], prompts: list[str], concurrency: int
) -> dict[str, Any]:
    """Send every prompt, ``concurrency`` at a time; tokens and timings."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0
    failed = 0

    async def one(client: httpx.AsyncClient, prompt: str) -> None:
        nonlocal tokens, failed
        async with sem:
            t0 = time.monotonic()
            r = await client.post(
                f"{url}/v1/completions", json={"model": MODEL, "prompt": prompt, **body}
            )
            latencies.append(time.monotonic() - t0)
            if r.status_code != 200:
                failed += 1
                return
            tokens += int(r.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(timeout=600) as client:
        t0 = time.monotonic()
        await asyncio.gather(*(one(client, p) for p in prompts))
        wall = time.monotonic() - t0
    return {
        "requests": len(prompts),
        "failed": failed,
        "wall_s": wall,
        "returned_tokens": tokens,
        "returned_tok_s": tokens / wall,
        "latency_p50": statistics.median(latencies),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--backend", choices=["llamacpp", "transformers"], default="llamacpp")
    args = ap.parse_args()
    bias = eog_bias(model_path())
    prompts = PROMPTS[: args.prompts]
    modes: dict[str, tuple[dict[str, Any], int]] = {
        "greedy": ({"temperature": 0}, 1),
        f"beam w{args.width}": ({"use_beam_search": True, "beam_width": args.width}, args.width),
    }
    results: dict[str, dict[int, list[dict[str, Any]]]] = {
        m: {c: [] for c in args.concurrency} for m in modes
    }
    served = [{"name": MODEL, "engine": {"backend": args.backend}}]
    server = start_server("lmaas", "", {"LMAAS_MODELS": json.dumps(served)})
    try:
        asyncio.run(run_level(server.url, {"max_tokens": 4}, prompts[:1], 1))  # warm-up
        for rep in range(args.reps):
            for c in args.concurrency:
                for mode, (extra, width) in modes.items():
                    body = {"max_tokens": args.max_tokens, "logit_bias": bias, **extra}
                    res = asyncio.run(run_level(server.url, body, prompts, c))
                    res["decoded_tok_s"] = res["returned_tok_s"] * width
                    results[mode][c].append(res)
                    print(
                        f"rep {rep + 1} c={c} {mode}: {res['returned_tok_s']:.1f} returned tok/s, "
                        f"{res['decoded_tok_s']:.1f} decoded tok/s, failed {res['failed']}",
                        flush=True,
                    )
    finally:
        server.stop()
    rows = [
        "| mode | concurrent requests | returned tok/s | decoded tok/s | latency p50 (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, by_level in results.items():
        for c, runs in by_level.items():

            def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            rows.append(
                f"| {mode} | {c} | {med('returned_tok_s'):.1f} | {med('decoded_tok_s'):.1f} | "
                f"{med('latency_p50'):.2f} |"
            )
    table = "\n".join(rows)
    print()
    print(table)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"beam-{args.backend}-{stamp}.json").write_text(
        json.dumps({"args": vars(args), "results": results, "table": table}, indent=1)
    )
    print(f"\nwritten bench/results/beam-{args.backend}-{stamp}.json")


if __name__ == "__main__":
    main()
