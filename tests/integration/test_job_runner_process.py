"""The job runner as a process, without a gateway: the supervisor restarts it when it is
killed and stops it with the gateway; a runner whose gateway is gone (its pipe closed, as
after a `kill -9` of the gateway) stops by itself."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from lmaas.config import ModelConfig, Settings
from lmaas.config_jobs import JobSettings
from lmaas.db import create_db_engine, upgrade_to_head
from lmaas.jobs.runner import RunnerConfig
from lmaas.jobs.supervisor import RunnerSupervisor, gateway_url
from lmaas.protocol.jobs import RUNNER_CONFIG_ENV, RUNNER_TOKEN_ENV


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: the runner waits for a gateway that never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    engine = create_db_engine(f"sqlite:///{tmp_path}/lmaas.db")
    upgrade_to_head(engine)
    engine.dispose()
    return tmp_path


async def until(check: object, timeout: float = 30.0) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def test_the_runner_reaches_the_gateway_on_loopback() -> None:
    assert gateway_url("0.0.0.0", 8000, tls=False) == "http://127.0.0.1:8000"
    assert gateway_url("::", 8000, tls=True) == "https://[::1]:8000"
    assert gateway_url("127.0.0.1", 9, tls=False) == "http://127.0.0.1:9"
    assert gateway_url("10.1.2.3", 9, tls=False) == "http://10.1.2.3:9"


async def test_a_killed_runner_is_restarted_and_stopped_with_the_gateway(
    home: Path, closed_port: int
) -> None:
    settings = Settings(
        home=home, port=closed_port, models=[ModelConfig(name="fake", path="/fake.gguf")]
    )
    supervisor = RunnerSupervisor(settings)
    await supervisor.start()
    try:
        await until(lambda: supervisor.pid is not None)
        first = supervisor.pid
        assert first is not None
        cmdline = psutil.Process(first).cmdline()
        assert "lmaas.jobs.runner" in cmdline
        assert supervisor.token not in " ".join(cmdline)  # the token is in no command line
        os.kill(first, signal.SIGKILL)
        await until(lambda: supervisor.pid not in (None, first))
        assert supervisor.restarts == 1
    finally:
        await supervisor.stop()
    assert supervisor.pid is None
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie"


def test_a_runner_stops_when_its_gateway_is_gone(home: Path, closed_port: int) -> None:
    config = RunnerConfig(
        runner_id="orphan",
        database_url=f"sqlite:///{home}/lmaas.db",
        home=home,
        gateway_url=f"http://127.0.0.1:{closed_port}",
        jobs=JobSettings(),
        max_upload_bytes=1 << 20,
    )
    read_fd, write_fd = os.pipe()
    env = {**os.environ, RUNNER_CONFIG_ENV: config.model_dump_json(), RUNNER_TOKEN_ENV: "t"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmaas.jobs.runner", "--parent-fd", str(read_fd)],
        pass_fds=(read_fd,),
        env=env,
        stderr=subprocess.PIPE,
    )
    os.close(read_fd)
    try:
        os.write(write_fd, b"w")  # a wake-up is not an end
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
        os.close(write_fd)  # what the gateway's death does
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        assert b"the gateway that started this job runner is gone" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
