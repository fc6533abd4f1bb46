"""Admin helpers for e2e tests: API keys made with the real CLI, a server started with them,
and the `lmaas` CLI run against it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.e2e.server import ServerProcess


def cli(home: Path, *args: str, key: str | None = None, url: str | None = None) -> str:
    env = {**os.environ, "LMAAS_HOME": str(home)}
    if key:
        env["LMAAS_API_KEY"] = key
    if url:
        env["LMAAS_URL"] = url
    done = subprocess.run(
        [sys.executable, "-m", "lmaas", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout + done.stderr


def new_key(
    home: Path, scope: str, *extra: str, env: dict[str, str] | None = None, name: str = "t"
) -> str:
    """A key made by ``lmaas keys create`` in the database of ``home`` (or the one
    ``env["LMAAS_DATABASE_URL"]`` names, as the server will be given)."""
    done = subprocess.run(
        [sys.executable, "-m", "lmaas", "keys", "create", "--scope", scope, "--name", name, *extra],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {}), "LMAAS_HOME": str(home)},
        check=True,
        timeout=60,
    )
    return done.stdout.strip().splitlines()[-1]


class Env:
    def __init__(self, home: Path, server: ServerProcess, admin: str, user: str) -> None:
        self.home, self.server, self.admin, self.user = home, server, admin, user

    def get(
        self, path: str, key: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return self.req("GET", path, key, headers=headers)

    def req(
        self,
        method: str,
        path: str,
        key: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        json: object = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        return httpx.request(
            method,
            self.server.url + path,
            headers={**self._h(key), **(headers or {})},
            json=json,
            content=content,
            timeout=300,
        )

    def _h(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}


@contextmanager
def served_env(
    home: Path,
    *server_args: str,
    user_models: Sequence[str] = (),
    server_env: dict[str, str] | None = None,
) -> Iterator[Env]:
    """A ready server over ``home`` with an admin key and an inference key (limited to
    ``user_models`` when given); stopped on exit."""
    admin = new_key(home, "admin", env=server_env)
    models = ["--models", *user_models] if user_models else []
    user = new_key(home, "inference", *models, env=server_env)
    server = ServerProcess(home, *server_args, env=server_env)
    try:
        server.wait_ready()
        yield Env(home, server, admin, user)
    finally:
        server.stop()
