"""Scale-out benchmark (issue 13): replicas on this machine and on a Ray cluster, and the
autoscaler's reaction to a step load.

(a) **1 vs 2 replicas** at ``--streams`` concurrent streams (16), for each ``--clusters`` kind:
    ``local`` (worker processes of the gateway) and ``ray`` (a Ray cluster of two nodes on this
    machine, ``ray.cluster_utils.Cluster``, half the cores each; the gateway joins it with
    ``--ray-address``). A replica gets the cores over the replicas (1 x all, 2 x half), as
    ``bench/plan.py`` does. Each request makes exactly ``--max-tokens`` tokens (``ignore_eos``);
    the figures are output tokens/s, requests/s and TTFT p50/p99 (``bench/loadgen.py``).
(b) **The autoscaler** (``min_replicas`` 1, ``max_replicas`` 2, ``target_ongoing_requests``
    ``--target``, ``--upscale-delay``, ``--downscale-delay``; ticks every 0.25 s): from one ready
    replica, ``--step-streams`` clients stream back to back; then the load drops to one stream.
    Measured: the time from the step to the scale-up decision and to the second replica ready,
    from the drop to the scale-down decision and to one replica left (the other drained and
    stopped), and the requests that failed in each phase (target: 0). Times come from polling
    the admin API every 0.1 s (so +-0.1 s) and the decision events' timestamps.

Prints markdown tables (and writes the raw figures to bench/results/scale-<time>.json). Run it on
a quiet machine; a smoke run takes a minute or two:

    .venv/bin/python bench/scale.py                       # ~10 minutes on 2 cores
    .venv/bin/python bench/scale.py --requests 4 --max-tokens 4 --streams 2 --step-streams 4 \\
        --upscale-delay 0.5 --downscale-delay 1 --clusters local
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lmaas.local_admin import read_token  # noqa: E402
from loadgen import PROMPTS, RequestResult, one_request, run_level  # noqa: E402
from run import MODEL, Server, free_port  # noqa: E402

CORES = len(os.sched_getaffinity(0))
POLL = 0.1


@contextlib.contextmanager
def ray_cluster() -> Iterator[str]:
    """Two Ray nodes on this machine, half the cores each; their address."""
    from ray.cluster_utils import Cluster

    half = max(1, CORES // 2)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": half, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=half)
        cluster.wait_for_nodes()
        yield str(cluster.address)
    finally:
        cluster.shutdown()


def serve(model: dict[str, Any], ray_address: str | None) -> Served:
    home = Path(tempfile.mkdtemp(prefix="lmaas-scale-"))
    config = {
        "models": [model],
        "autoscaler": {"interval_s": 0.25},
        "cluster": {"node_cache_dir": str(home / "node-cache")},
    }
    (home / "config.yaml").write_text(json.dumps(config))  # YAML is a superset of JSON
    port = free_port()
    argv = [sys.executable, "-m", "lmaas", "serve", "--port", str(port), "--home", str(home)]
    argv += ["--config", str(home / "config.yaml")]
    if ray_address is not None:
        argv += ["--ray-address", ray_address]
    return Served(argv, port, "/ready", {"LMAAS_ACCESS_LOG": "false"}, home=home)


class Served(Server):
    """A server and its home (where `lmaas serve` wrote its local admin token)."""

    def __init__(self, *args: Any, home: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        token = read_token(home)
        self.admin = {"Authorization": f"Bearer {token}"}


async def deployment(session: aiohttp.ClientSession, server: Served) -> dict[str, Any]:
    async with session.get(f"{server.url}/admin/deployments/{MODEL}", headers=server.admin) as r:
        r.raise_for_status()
        return dict(await r.json())


def settled(d: dict[str, Any], replicas: int) -> bool:
    """Exactly ``replicas`` replicas, all ready (none starting or draining)."""
    states = [r["state"] for r in d["replica_status"]]
    return d["replicas"] == replicas and states == ["ready"] * replicas


async def until_settled(
    session: aiohttp.ClientSession, server: Served, replicas: int, timeout: float
) -> tuple[float, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = await deployment(session, server)
        if settled(d, replicas):
            return time.time(), d
        await asyncio.sleep(POLL)
    raise TimeoutError(f"{MODEL} did not settle at {replicas} replicas in {timeout:.0f} s")


def payload(i: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": PROMPTS[i % len(PROMPTS)],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# -- (a) 1 vs 2 replicas ---------------------------------------------------------------------


def throughput(kind: str, replicas: int, args: argparse.Namespace, ray: str | None) -> dict:
    threads = max(1, CORES // replicas)
    engine = {"threads": threads, "context_size": 4096, "max_num_seqs": args.streams}
    server = serve({"name": MODEL, "replicas": replicas, "engine": engine}, ray)

    async def measure() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            _, d = await until_settled(session, server, replicas, 300)
        extra = {"ignore_eos": True}
        await run_level(server.url, MODEL, 2, 4, 4, extra)  # warm-up
        row = await run_level(
            server.url, MODEL, args.streams, args.requests, args.max_tokens, extra
        )
        row["nodes"] = sorted({r["node"] for r in d["replica_status"]})
        return row

    try:
        row = asyncio.run(measure())
    finally:
        server.stop()
    return {"cluster": kind, "replicas": replicas, "threads": threads, **row}


# -- (b) the autoscaler's reaction ------------------------------------------------------------


async def keep_streaming(
    url: str, stop: asyncio.Event, results: list[tuple[float, RequestResult]], max_tokens: int
) -> None:
    """Requests back to back until ``stop``; each result with its start time."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        i = 0
        while not stop.is_set():
            started = time.time()
            result = await one_request(session, f"{url}/v1/completions", payload(i, max_tokens))
            results.append((started, result))
            i += 1


def event_at(d: dict[str, Any], direction: str) -> float | None:
    events = [e for e in d["autoscaling"]["events"] if e["direction"] == direction]
    return datetime.fromisoformat(events[0]["at"]).timestamp() if events else None


async def step_load(server: Served, args: argparse.Namespace) -> dict[str, Any]:
    results: list[tuple[float, RequestResult]] = []
    async with aiohttp.ClientSession() as session:
        await until_settled(session, server, 1, 300)
        step, trickle = asyncio.Event(), asyncio.Event()
        step_at = time.time()
        stops = [trickle] + [step] * (args.step_streams - 1)
        clients = [
            asyncio.create_task(keep_streaming(server.url, stop, results, args.max_tokens))
            for stop in stops
        ]
        try:
            ready_at, up = await until_settled(session, server, 2, 300)
            step.set()  # the load drops to one stream
            drop_at = time.time()
            down_at, down = await until_settled(session, server, 1, 300)
        finally:
            step.set()
            trickle.set()
            await asyncio.gather(*clients)
    up_decided, down_decided = event_at(up, "up"), event_at(down, "down")
    before = [r for t, r in results if t < drop_at]
    after = [r for t, r in results if t >= drop_at]
    return {
        "decision_s": None if up_decided is None else up_decided - step_at,
        "ready_s": ready_at - step_at,
        "up_requests": len(before),
        "up_failed": sum(not r.ok for r in before),
        "down_decision_s": None if down_decided is None else down_decided - drop_at,
        "down_s": down_at - drop_at,
        "down_requests": len(after),
        "down_failed": sum(not r.ok for r in after),
        "errors": sorted({r.error for _, r in results if not r.ok})[:3],
        "nodes": sorted({r["node"] for r in up["replica_status"]}),
    }


def autoscale(kind: str, args: argparse.Namespace, ray: str | None) -> dict[str, Any]:
    auto = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": args.target,
        "upscale_delay_s": args.upscale_delay,
        "downscale_delay_s": args.downscale_delay,
        "look_back_period_s": 1,
    }
    engine = {"threads": max(1, CORES // 2), "context_size": 4096}
    server = serve({"name": MODEL, "engine": engine, "autoscaling": auto}, ray)
    try:
        row = asyncio.run(step_load(server, args))
    finally:
        server.stop()
    return {"cluster": kind, "step_streams": args.step_streams, **row}


# -- the report -------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def report(scaling: list[dict[str, Any]], reactions: list[dict[str, Any]], args: Any) -> str:
    lines = [
        f"{CORES} cores; {MODEL}; {args.streams} streams, {args.requests} requests of "
        f"{args.max_tokens} tokens",
        "",
        "| cluster | replicas x threads | nodes | output tok/s | req/s | TTFT p50 (s) "
        "| TTFT p99 (s) | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in scaling:
        lines.append(
            f"| {r['cluster']} | {r['replicas']} x {r['threads']} | {len(r['nodes'])} "
            f"| {r['output_tok_s']:.1f} | {r['request_s']:.2f} | {fmt(r['ttft_p50'])} "
            f"| {fmt(r['ttft_p99'])} | {r['failed']} |"
        )
    if reactions:
        lines += [
            "",
            f"Autoscaler: target_ongoing_requests {args.target:g}, upscale_delay_s "
            f"{args.upscale_delay:g}, downscale_delay_s {args.downscale_delay:g}; a step to "
            f"{args.step_streams} streams, then 1",
            "",
            "| cluster | up decided (s) | 2nd replica ready (s) | failed / requests (up) "
            "| down decided (s) | 1 replica left (s) | failed / requests (down) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in reactions:
            lines.append(
                f"| {r['cluster']} | {fmt(r['decision_s'])} | {fmt(r['ready_s'])} "
                f"| {r['up_failed']} / {r['up_requests']} | {fmt(r['down_decision_s'])} "
                f"| {fmt(r['down_s'])} | {r['down_failed']} / {r['down_requests']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", nargs="+", default=["local", "ray"])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--step-streams", type=int, default=8)
    parser.add_argument("--target", type=float, default=2)
    parser.add_argument("--upscale-delay", type=float, default=2)
    parser.add_argument("--downscale-delay", type=float, default=5)
    parser.add_argument("--skip-replicas", action="store_true", help="only (b)")
    parser.add_argument("--skip-autoscaler", action="store_true", help="only (a)")
    args = parser.parse_args()

    scaling: list[dict[str, Any]] = []
    reactions: list[dict[str, Any]] = []
    for kind in args.clusters:
        with ray_cluster() if kind == "ray" else contextlib.nullcontext() as address:
            if not args.skip_replicas:
                for replicas in (1, 2):
                    scaling.append(throughput(kind, replicas, args, address))
                    print(json.dumps(scaling[-1]), file=sys.stderr)
            if not args.skip_autoscaler:
                reactions.append(autoscale(kind, args, address))
                print(json.dumps(reactions[-1]), file=sys.stderr)
    text = report(scaling, reactions, args)
    print(text)
    out = HERE / "results" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"scaling": scaling, "autoscaler": reactions}, indent=2))


if __name__ == "__main__":
    main()
