"""CPU time per streamed token in each lmaas process, one stream at a time.

Starts ``lmaas serve`` with the shipped model, streams ``--requests`` completions of
``--max-tokens`` tokens one after another, and prints each process's CPU seconds (user +
system, from /proc) per token: the gateway, the generation worker, and any other child. CPU
time hardly depends on what else the machine runs, so this shows where per-token overhead goes
even on a busy machine. On 2 cores, CPU that the gateway and the client spend per token is
taken from llama.cpp's two threads.

    python bench/cpu_per_token.py --requests 4 --max-tokens 512
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import MODEL, model_path, start_lmaas


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    if "lmaas.worker" in text:
        name = argv[argv.index(b"--name") + 1].decode() if b"--name" in argv else "?"
        return f"worker {name}"
    return text[:60]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=512)
    args = ap.parse_args()
    config = {"models": [{"name": MODEL, "path": model_path(), "engine": {"max_num_seqs": 16}}]}
    server = start_lmaas(config)
    base = server.url
    try:
        body = {
            "model": MODEL,
            "prompt": "Once upon a time",
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }

        def one() -> int:
            n = 0
            with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=600) as r:
                for line in r.iter_lines():
                    n += line.startswith("data: {")
            return n

        one()  # warm-up
        kids = subprocess.run(
            ["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True
        ).stdout.split()
        pids = [server.proc.pid, *map(int, kids)]
        before = {pid: cpu_seconds(pid) for pid in pids}
        t0 = time.monotonic()
        tokens = sum(one() for _ in range(args.requests))
        wall = time.monotonic() - t0
        after = {pid: cpu_seconds(pid) for pid in pids}
        print(f"{tokens} tokens in {wall:.2f} s: {tokens / wall:.1f} tok/s")
        for pid in pids:
            name = "gateway" if pid == server.proc.pid else command(pid)
            used = after[pid] - before[pid]
            print(f"  {name:40s} {used:7.2f} s CPU  {1e6 * used / tokens:8.0f} us/token")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
