"""A real server over HTTPS (a self-signed certificate made here), then SIGTERM with a stream
and a plain request in flight: the plain one completes, the stream completes or ends with a
clean error event and [DONE], new requests are refused, and the process exits 0 in time."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

DRAIN_S = 30
STREAM_TOKENS = 1500


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = Path(tmp_path_factory.mktemp("lmaas-home"))
    cert, key = self_signed(home)
    proc = ServerProcess(
        home,
        "--ssl-certfile", str(cert),
        "--ssl-keyfile", str(key),
        "--shutdown-drain-seconds", str(DRAIN_S),
    )  # fmt: skip
    proc.url = f"https://127.0.0.1:{proc.port}"
    proc.verify = ssl.create_default_context(cafile=str(cert))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def chat_body(max_tokens: int, **kw: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from one to a thousand."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        **kw,
    }


def test_https_with_the_certificate_made_for_it(server: ServerProcess) -> None:
    r = httpx.post(
        f"{server.url}/v1/chat/completions", json=chat_body(2), verify=server.verify, timeout=60
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2, r.text
    with pytest.raises(httpx.ConnectError):  # an unknown certificate is not trusted
        httpx.get(f"{server.url}/health", timeout=5)
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not served on the TLS port
        httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5)


class StreamReader(threading.Thread):
    """Reads one streamed chat completion; ``started`` once the first event arrived."""

    def __init__(self, server: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.started = threading.Event()
        self.status = 0
        self.events: list[str] = []
        self.times: list[float] = []

    def run(self) -> None:
        body = chat_body(STREAM_TOKENS, stream=True)
        with httpx.stream(
            "POST",
            f"{self.server.url}/v1/chat/completions",
            json=body,
            verify=self.server.verify,
            timeout=120,
        ) as r:
            self.status = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line[6:])
                    self.times.append(time.monotonic())
                    if len(self.events) >= 3:  # the role chunk and two tokens
                        self.started.set()

    def plain_tokens(self) -> int:
        """As many tokens as this machine decodes in a quarter of the drain (as measured on
        the stream): in flight when SIGTERM comes, finished well inside the drain."""
        per_token = max(self.times[2] - self.times[1], 1e-3)
        return max(2, min(200, int(DRAIN_S / 4 / per_token)))


class PlainRequest(threading.Thread):
    def __init__(self, server: ServerProcess, tokens: int) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.tokens = tokens
        self.response: httpx.Response | None = None

    def run(self) -> None:
        self.response = httpx.post(
            f"{self.server.url}/v1/chat/completions",
            json=chat_body(self.tokens),
            verify=self.server.verify,
            timeout=120,
        )


def in_flight(server: ServerProcess) -> float:
    """Requests the model has running or waiting (the gauges /metrics refreshes)."""
    text = httpx.get(f"{server.url}/metrics", verify=server.verify, timeout=5).text
    total = 0.0
    for line in text.splitlines():
        for gauge in ("lmaas_num_requests_running", "lmaas_num_requests_waiting"):
            if line.startswith(f'{gauge}{{model="{MODEL}"}}'):
                total += float(line.split()[-1])
    return total


def refused(server: ServerProcess) -> bool:
    """A new request is refused: the listener is closed, or a 503 saying why."""
    try:
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json=chat_body(1),
            verify=server.verify,
            timeout=30,
        )
    except httpx.ConnectError:
        return True
    assert r.status_code in (200, 503), r.text  # served before the signal landed, or refused
    return r.status_code == 503


def test_sigterm_drains_requests_in_flight_then_exits_0(server: ServerProcess) -> None:
    workers = server.worker_pids(MODEL)
    assert workers
    stream = StreamReader(server)
    stream.start()
    assert stream.started.wait(60), "the stream never started"
    plain = PlainRequest(server, stream.plain_tokens())
    plain.start()
    wait_until(lambda: in_flight(server) >= 2, 30, 0.05, "both requests to run")

    os.kill(server.proc.pid, signal.SIGTERM)
    signalled = time.monotonic()
    wait_until(lambda: refused(server), 10, 0.1, "new requests to be refused")
    code = server.proc.wait(timeout=DRAIN_S + 20)
    assert code == 0, server.log()[-3000:]
    assert time.monotonic() - signalled < DRAIN_S + 20
    stream.join(30)
    plain.join(30)

    assert plain.response is not None
    assert plain.response.status_code == 200, plain.response.text
    assert plain.response.json()["usage"]["completion_tokens"] == plain.tokens

    assert stream.status == 200 and stream.events[-1] == "[DONE]", stream.events[-3:]
    last = json.loads(stream.events[-2])
    if "error" in last:  # cut at the end of the drain: a clean error event
        assert "shutting down" in last["error"]["message"], last
    else:  # or it finished inside the drain
        finishes = [json.loads(e)["choices"][0].get("finish_reason") for e in stream.events[:-1]]
        assert "length" in finishes, stream.events[-3:]

    log = server.log()
    assert "Traceback" not in log and " 500" not in log, log[-3000:]
    assert not any(psutil.pid_exists(p) and _alive(p) for p in workers), "workers left running"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
