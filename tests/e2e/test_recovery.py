"""`kill -9` of a worker: in-flight requests fail fast with 503, the worker comes back."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e


def replica(server: ServerProcess) -> dict[str, Any]:
    body = httpx.get(f"{server.url}/ready", timeout=5).json()
    return dict(body["models"][MODEL]["replicas"][0])


def test_kill_worker_then_recover(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    try:
        server.wait_ready()
        (old_pid,) = server.worker_pids(MODEL)
        replica_id = replica(server)["id"]
        outcome: dict[str, Any] = {}

        def long_stream() -> None:
            lines: list[str] = []
            started = time.monotonic()
            with httpx.stream(
                "POST",
                f"{server.url}/v1/completions",
                timeout=60,
                json={
                    "model": MODEL,
                    "prompt": "Count to a thousand:",
                    "max_tokens": 1500,
                    "ignore_eos": True,
                    "stream": True,
                },
            ) as r:
                outcome["status"] = r.status_code
                for line in r.iter_lines():
                    lines.append(line)
                    if len(lines) == 4:
                        outcome["streaming"] = True
            outcome["lines"] = lines
            outcome["seconds"] = time.monotonic() - started

        t = threading.Thread(target=long_stream)
        t.start()
        wait_until(lambda: outcome.get("streaming"), 60, what="the stream to start")
        os.kill(old_pid, signal.SIGKILL)
        t.join(timeout=60)
        assert not t.is_alive()
        # The stream ended promptly with an error event, not after 1500 tokens or a timeout.
        events = [ln[6:] for ln in outcome["lines"] if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "model_unavailable"

        # Right after the crash (the restart waits 0.5 s, then loads the model), new requests
        # fail fast with a clear 503 until it is back.
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            timeout=10,
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "service_unavailable_error"
        assert "retry-after" in r.headers

        info = wait_until(
            lambda: (rep := replica(server))["state"] == "ready" and rep,
            120,
            0.2,
            "the worker to be restarted",
        )
        # The same replica (same id), served by a new worker process.
        assert (info["id"], info["restarts"]) == (replica_id, 1)
        (new_pid,) = server.worker_pids(MODEL)
        assert new_pid != old_pid
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            timeout=60,
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        assert server.proc.poll() is None  # the gateway never died
    finally:
        server.stop()


def test_not_ready_until_the_model_has_loaded(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    try:
        statuses: list[int] = []

        def health_answers() -> bool:
            statuses.append(httpx.get(f"{server.url}/ready", timeout=2).status_code)
            return httpx.get(f"{server.url}/health", timeout=2).status_code == 200

        wait_until(health_answers, 60, 0.02, "the gateway to answer")
        server.wait_ready()
        # The gateway answered /ready with 503 while its worker was still loading, then 200.
        assert statuses[0] == 503
    finally:
        server.stop()
