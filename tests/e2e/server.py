"""A real `lmaas serve` subprocess on a free port, polled until ready, its tree killed after."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the server may not be listening yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


class ServerProcess:
    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.verify: Any = True  # what httpx checks the server's certificate with (HTTPS)
        self.log_path = home / "server.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lmaas",
                "serve",
                "--port",
                str(self.port),
                "--home",
                str(home),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 180) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()[-2000:]}")
            return httpx.get(f"{self.url}/ready", timeout=2, verify=self.verify).status_code == 200

        try:
            wait_until(ready, timeout, 0.2, "the server to become ready")
        except (TimeoutError, RuntimeError):
            raise RuntimeError(f"server did not become ready; log:\n{self.log()[-4000:]}") from None

    def worker_pids(self, name: str) -> set[int]:
        """The worker processes serving deployment ``name``, found among the server's children
        (the API names replicas by id and node, not by process)."""
        pids = set()
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                cmdline = child.cmdline()
                alive = child.status() != psutil.STATUS_ZOMBIE
                if alive and "lmaas.worker" in cmdline and _arg(cmdline, "--name") == name:
                    pids.add(child.pid)
        return pids

    def runner_pids(self) -> set[int]:
        """The job runner processes among the server's children (one, unless it is being
        replaced)."""
        pids = set()
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                alive = child.status() != psutil.STATUS_ZOMBIE
                if alive and "lmaas.jobs.runner" in child.cmdline():
                    pids.add(child.pid)
        return pids

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()


def _arg(cmdline: list[str], flag: str) -> str | None:
    return cmdline[cmdline.index(flag) + 1] if flag in cmdline[:-1] else None
