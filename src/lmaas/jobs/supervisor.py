"""The gateway's side of the job runner: start ``python -m lmaas.jobs.runner``, restart it
when it dies, wake it when a job is queued, stop it with the gateway.

The runner gets a token made here (:attr:`RunnerSupervisor.token`, random per gateway start,
never stored) in its environment, and the gateway accepts that token from loopback only.
A pipe whose write end only this process holds tells the runner that a job was queued (a
byte) and that the gateway is gone (its end, even after a ``kill -9``). When a runner dies,
the next one is told its id, so the leases of the dead one end at once instead of after
``jobs.lease_seconds``.

On a Ray cluster with a PostgreSQL catalog the kinds of ``jobs.ray.kinds`` run in runner actors
on the cluster instead (``remote``, :mod:`lmaas.jobs.ray_runners`), started, woken and stopped
with this one; the local runner runs the other kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
import time
import uuid
from typing import Final

from lmaas.config import Settings
from lmaas.db import database_url
from lmaas.jobs.backoff import RestartBackoff
from lmaas.jobs.kinds import JOB_KINDS
from lmaas.jobs.ray_runners import RayRunners
from lmaas.jobs.runner import RunnerConfig
from lmaas.protocol.jobs import RUNNER_CONFIG_ENV, RUNNER_TOKEN_ENV

log = logging.getLogger(__name__)

# The runner lets its jobs go and aborts its lines on SIGTERM; then it is killed.
_STOP_GRACE: Final = 15.0
_WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def gateway_url(host: str, port: int, *, tls: bool) -> str:
    """Where the runner reaches the gateway: loopback when it listens on every address,
    else the address it listens on."""
    address = _WILDCARDS.get(host, host)
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"{'https' if tls else 'http'}://{address}:{port}"


class RunnerSupervisor:
    def __init__(self, settings: Settings, remote: RayRunners | None = None) -> None:
        self.settings = settings
        self.remote = remote
        self.token = secrets.token_urlsafe(32)
        self.pid: int | None = None
        self.restarts = 0
        self._url: str | None = None
        self._url_known = asyncio.Event()
        if settings.port != 0:
            self.listening(settings.port)
        self._proc: asyncio.subprocess.Process | None = None
        self._wake_fd: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def listening(self, port: int) -> None:
        """The port the gateway listens on (known only once bound when ``port`` is 0)."""
        tls = self.settings.ssl_certfile is not None
        self._url = gateway_url(self.settings.host, port, tls=tls)
        self._url_known.set()

    def remote_runner_of(self, token: str) -> str | None:
        """The runner id whose current run on the cluster has secret ``token`` (None: none)."""
        return None if self.remote is None else self.remote.runner_of(token)

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name="supervise-job-runner")
        if self.remote is not None:
            await self.remote.start()

    def wake(self) -> None:
        """Tell the runners a job was queued (they also look every few seconds anyway)."""
        if self.remote is not None:
            self.remote.wake()
        fd = self._wake_fd
        if fd is None:
            return
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(fd, b"w")

    def stop_soon(self) -> None:
        """Ask the runner to stop now (the gateway is draining); it is not restarted."""
        self._stopping = True
        if self.remote is not None:
            self.remote.stop_soon()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()

    async def stop(self) -> None:
        self.stop_soon()
        if self.remote is not None:
            await self.remote.stop()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), _STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _supervise(self) -> None:
        await self._url_known.wait()
        backoff, previous = RestartBackoff(), None
        while not self._stopping:
            runner_id = f"{socket.gethostname()[:40]}-{uuid.uuid4().hex[:12]}"
            started = time.monotonic()
            try:
                code = await self._run_once(runner_id, previous)
            except Exception:
                log.exception("the job runner could not be started")
                code = None
            previous = runner_id
            if self._stopping:
                break
            self.restarts += 1
            delay = backoff.after(started)
            log.warning(
                "job runner exited (code %s); restarting in %.1fs (restart %d)",
                code,
                delay,
                self.restarts,
            )
            await asyncio.sleep(delay)

    async def _run_once(self, runner_id: str, previous: str | None) -> int:
        assert self._url is not None
        settings = self.settings
        config = RunnerConfig(
            runner_id=runner_id,
            database_url=settings.database_url or database_url(settings.home_dir),
            home=settings.home_dir,
            gateway_url=self._url,
            # Our own certificate, on loopback: it need not name 127.0.0.1.
            verify_tls=False,
            release_runner=previous,
            jobs=settings.jobs,
            max_upload_bytes=settings.limits.max_upload_bytes,
            log_level=settings.log_level,
            kinds=self._local_kinds(),
        )
        read_fd, write_fd = os.pipe()
        try:
            os.set_blocking(write_fd, False)
            env = {
                **os.environ,
                RUNNER_CONFIG_ENV: config.model_dump_json(),
                RUNNER_TOKEN_ENV: self.token,
                "PYTHONUNBUFFERED": "1",
            }
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "lmaas.jobs.runner",
                "--parent-fd",
                str(read_fd),
                pass_fds=(read_fd,),
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self.pid = self._proc.pid
        self._wake_fd = write_fd
        log.info("job runner %s started (pid %s)", runner_id, self.pid)
        try:
            return await self._proc.wait()
        finally:
            self._wake_fd = None
            os.close(write_fd)
            self.pid = None

    def _local_kinds(self) -> list[str] | None:
        """The kinds this machine's runner runs: those not run on the cluster."""
        if self.remote is None:
            return None
        return [kind for kind in JOB_KINDS if kind not in self.remote.kinds]
