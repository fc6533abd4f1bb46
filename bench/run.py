"""Side-by-side benchmark: lmaas vs the raw engine vs llama-cpp-python's own server vs llama.cpp's
C++ server (llama-server, built once into ~/.cache by bench/llama_server.py).

    python bench/run.py [--concurrency 1 4 16 32] [--max-tokens 128] [--reps 3] [--systems ...]

Same GGUF, same machine, same run, temperature 0, end-of-sequence banned through logit_bias
(so every request yields exactly max-tokens tokens on every system). Prints a markdown table
with medians over the repetitions and the ratios, checks the targets of issues 2 and 10, and writes
the raw figures to bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llama_server  # noqa: E402
from loadgen import run_level  # noqa: E402

MODEL = "smollm2-135m-instruct"
SYSTEMS = ["lmaas", "raw", "llamacpp-server", "llama-server"]


def model_path() -> str:
    from lmaas.config import SHIPPED_MODELS, find_package_file

    shipped = SHIPPED_MODELS[MODEL]
    return str(find_package_file(shipped.package, shipped.file))


def eog_bias(path: str) -> dict[str, float]:
    """logit_bias that bans every end-of-generation token of the model."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import ctypes,json,sys,llama_cpp as l\n"
                "cb=l.llama_log_callback(lambda *a: None)\n"
                "l.llama_log_set(cb, ctypes.c_void_p(0))\n"
                "p=l.llama_model_default_params(); p.vocab_only=True\n"
                "m=l.llama_model_load_from_file(sys.argv[1].encode(), p)\n"
                "v=l.llama_model_get_vocab(m)\n"
                "print(json.dumps([t for t in range(l.llama_vocab_n_tokens(v))"
                " if l.llama_vocab_is_eog(v,t)]))"
            ),
            path,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return {str(t): -100.0 for t in json.loads(out.stdout.strip().splitlines()[-1])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess in its own session; RSS of its process tree sampled while it runs."""

    def __init__(
        self, argv: list[str], port: int, ready_path: str, env: dict[str, str] | None = None
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            prefix="bench-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[:4]} exited; see {self.log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    break
            time.sleep(0.25)
        else:
            raise RuntimeError(f"{argv[:4]} not ready; see {self.log.name}")
        self.peak_rss = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def tree_rss(self) -> int:
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs)
        except psutil.Error:
            return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_rss = max(self.peak_rss, self.tree_rss())

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def sweep_server(
    server: Server,
    model: str,
    levels: list[int],
    max_tokens: int,
    reps: int,
    extra: dict[str, Any],
) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {c: [] for c in levels}
    asyncio.run(run_level(server.url, model, 1, 1, 8, extra))  # warm-up
    for rep in range(reps):
        for c in levels:
            n_req = c if c > 1 else 3
            res = asyncio.run(run_level(server.url, model, c, n_req, max_tokens, extra))
            out[c].append(res)
            print(
                f"  rep {rep + 1} c={c}: {res['output_tok_s']:.1f} tok/s, "
                f"ttft p50 {res['ttft_p50']:.2f}s, failed {res['failed']}",
                flush=True,
            )
    return out


def sweep_raw(
    path: str, levels: list[int], max_tokens: int, reps: int
) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {c: [] for c in levels}
    for rep in range(reps):
        proc = subprocess.run(
            [
                sys.executable,
                str(HERE / "raw_engine.py"),
                path,
                "--max-tokens",
                str(max_tokens),
                "--concurrency",
                *map(str, levels),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        for line in proc.stdout.splitlines():
            res = json.loads(line)
            out[res["concurrency"]].append(res)
            print(
                f"  rep {rep + 1} c={res['concurrency']}: {res['output_tok_s']:.1f} tok/s",
                flush=True,
            )
    return out


def median(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if r.get(key) == r.get(key)]  # drop NaN
    return statistics.median(values) if values else float("nan")


def table(results: dict[str, dict[int, list[dict[str, Any]]]], levels: list[int]) -> str:
    rows = [
        "| system | streams | output tok/s | TTFT p50 (s) | TTFT p99 (s) | TPOT p50 (ms) |"
        " lmaas / system |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for system, by_level in results.items():
        for c in levels:
            runs = by_level.get(c) or []
            if not runs:
                continue
            tok_s = median(runs, "output_tok_s")
            ours = (
                median(results["lmaas"].get(c, []), "output_tok_s")
                if "lmaas" in results
                else float("nan")
            )
            ratio = "" if system == "lmaas" or math.isnan(ours) else f"{ours / tok_s:.2f}x"
            rows.append(
                f"| {system} | {c} | {tok_s:.1f} | {median(runs, 'ttft_p50'):.2f} | "
                f"{median(runs, 'ttft_p99'):.2f} | {median(runs, 'tpot_p50') * 1000:.1f} | "
                f"{ratio} |"
            )
    return "\n".join(rows)


def targets(results: dict[str, dict[int, list[dict[str, Any]]]], peak_rss: int) -> list[str]:
    lines = []

    def tok(system: str, c: int) -> float:
        return median(results.get(system, {}).get(c, []), "output_tok_s")

    if 16 in results.get("lmaas", {}):
        ours = tok("lmaas", 16)
        if "llamacpp-server" in results:
            r = ours / tok("llamacpp-server", 16)
            lines.append(
                f"16 streams vs llama-cpp-python server: {r:.2f}x (target >= 3.0x) "
                f"{'PASS' if r >= 3.0 else 'FAIL'}"
            )
        if "raw" in results:
            r = ours / tok("raw", 16)
            lines.append(
                f"16 streams vs raw engine: {r:.0%} (target >= 90%) "
                f"{'PASS' if r >= 0.9 else 'FAIL'}"
            )
        ttft = median(results["lmaas"][16], "ttft_p50")
        lines.append(
            f"16 streams TTFT p50: {ttft:.2f}s (target <= 1s) {'PASS' if ttft <= 1.0 else 'FAIL'}"
        )
    if 1 in results.get("lmaas", {}) and "raw" in results:
        r = tok("lmaas", 1) / tok("raw", 1)
        lines.append(
            f"1 stream vs raw engine: {r:.0%} (target >= 95%) {'PASS' if r >= 0.95 else 'FAIL'}"
        )
    if "lmaas" in results and "llama-server" in results:
        lines += llama_server_targets(results, tok)
    if peak_rss:
        gib = peak_rss / 2**30
        lines.append(
            f"peak RSS gateway + worker: {peak_rss / 2**20:.0f} MiB (target <= 1 GiB) "
            f"{'PASS' if gib <= 1.0 else 'FAIL'}"
        )
    return lines


def llama_server_targets(
    results: dict[str, dict[int, list[dict[str, Any]]]], tok: Callable[[str, int], float]
) -> list[str]:
    """Issue 10: lmaas against llama.cpp's own C++ server, the strongest CPU peer."""
    lines = []
    for c, goal in ((16, 1.2), (1, 1.0)):
        if c in results["lmaas"] and c in results["llama-server"]:
            r = tok("lmaas", c) / tok("llama-server", c)
            lines.append(
                f"{c} stream{'s' if c > 1 else ''} vs llama-server: {r:.2f}x "
                f"(target >= {goal:.1f}x) {'PASS' if r >= goal else 'FAIL'}"
            )
    if 16 in results["lmaas"] and 16 in results["llama-server"]:
        ours = median(results["lmaas"][16], "ttft_p50")
        theirs = median(results["llama-server"][16], "ttft_p50")
        lines.append(
            f"16 streams TTFT p50 vs llama-server: {ours:.2f}s vs {theirs:.2f}s "
            f"(target: no worse) {'PASS' if ours <= theirs else 'FAIL'}"
        )
    return lines


def start_lmaas(config: dict[str, Any], env: dict[str, str] | None = None) -> Server:
    """``lmaas serve`` in a fresh home with ``config`` as its config file, once ready."""
    home = Path(tempfile.mkdtemp(prefix="lmaas-bench-"))
    (home / "config.yaml").write_text(json.dumps(config))  # YAML is a superset of JSON
    argv = [sys.executable, "-m", "lmaas", "serve", "--port", str(port := free_port())]
    argv += ["--home", str(home), "--config", str(home / "config.yaml")]
    return Server(argv, port, "/ready", {"LMAAS_ACCESS_LOG": "false", **(env or {})})


def start_server(system: str, path: str, lmaas_env: dict[str, str]) -> Server:
    port = free_port()
    if system == "llama-server":
        argv = llama_server.server_argv(
            llama_server.binary_path(), path, MODEL, port, os.cpu_count() or 1
        )
        return Server(argv, port, "/health")
    if system == "lmaas":
        home = tempfile.mkdtemp(prefix="lmaas-bench-")
        argv = [
            sys.executable,
            "-m",
            "lmaas",
            "serve",
            "--port",
            str(port),
            "--home",
            home,
            "--log-level",
            "warning",
        ]
        return Server(argv, port, "/ready", lmaas_env)
    argv = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        path,
        "--n_ctx",
        "4096",
        "--n_threads",
        str(os.cpu_count() or 1),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--interrupt_requests",
        "False",
    ]
    return Server(argv, port, "/v1/models")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--systems",
        nargs="+",
        default=SYSTEMS,
        choices=SYSTEMS,
    )
    ap.add_argument(
        "--lmaas-env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the lmaas server only",
    )
    args = ap.parse_args()
    lmaas_env = dict(kv.split("=", 1) for kv in args.lmaas_env)
    path = model_path()
    bias = eog_bias(path)
    if "llama-server" in args.systems:
        llama_server.ensure_binary()  # before any timing: the first build takes minutes
    levels = args.concurrency
    results: dict[str, dict[int, list[dict[str, Any]]]] = {}
    peak_rss = 0
    print(
        f"machine: {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM; model {Path(path).name}"
    )
    # Systems alternate within every repetition, so drift in a shared, noisy machine hits all
    # of them alike; medians are taken over the repetitions.
    for rep in range(args.reps):
        for system in args.systems:
            print(f"== rep {rep + 1}/{args.reps}: {system}", flush=True)
            by_level = results.setdefault(system, {c: [] for c in levels})
            if system == "raw":
                for c, runs in sweep_raw(path, levels, args.max_tokens, 1).items():
                    by_level[c] += runs
                continue
            server = start_server(system, path, lmaas_env)
            try:
                model = path if system == "llamacpp-server" else MODEL
                for c, runs in sweep_server(
                    server, model, levels, args.max_tokens, 1, {"logit_bias": bias}
                ).items():
                    by_level[c] += runs
                if system == "lmaas":
                    peak_rss = max(peak_rss, server.peak_rss)
            finally:
                server.stop()
    md = table(results, levels)
    checks = targets(results, peak_rss)
    print()
    print(md)
    print()
    print("\n".join(checks))
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"{stamp}.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "results": results,
                "peak_rss_bytes": peak_rss,
                "table": md,
                "targets": checks,
            },
            indent=1,
        )
    )
    print(f"\nwritten bench/results/{stamp}.json")


if __name__ == "__main__":
    main()
