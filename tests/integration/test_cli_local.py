"""The CLI with no server or a broken one (issue 14): one line and a non-zero exit for a refused
connection, a URL without http://, a timeout and an error no command expected, the traceback
only with ``--debug``; and the local admin token `lmaas serve` writes (mode 0600), which the
CLI sends to a loopback server only and the server takes from loopback clients only."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import typer

from lmaas.cli.http import AdminClient, local_key
from lmaas.config import MetricsSettings, ModelConfig, Settings
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.keys import KeyStore
from lmaas.local_admin import read_token, remove_token, token_path, write_token
from tests.bad_inputs import check_error_envelope
from tests.fakes import FakeEngine


def lmaas(
    *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command (its ``main``, as a user runs it), in a subprocess."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LMAAS_")}
    return subprocess.run(
        [sys.executable, "-m", "lmaas", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "LMAAS_HOME": str(home), **(env or {})},
    )


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0, result
    assert result.stdout == ""
    line = result.stderr.rstrip("\n")
    assert "\n" not in line and line.startswith("error"), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_refused_connection_and_bad_url_are_one_line(tmp_path: Path, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    _one_line(lmaas("ps", "--url", url, home=tmp_path), "cannot reach the server", url)
    _one_line(lmaas("models", "ls", "--url", "localhost:8000", home=tmp_path), "http://")
    # --debug, before or after the command (or LMAAS_DEBUG), shows where it failed.
    for args, env in (
        (("--debug", "ps", "--url", url), None),
        (("ps", "--url", url, "--debug"), None),
        (("ps", "--url", url), {"LMAAS_DEBUG": "1"}),
    ):
        result = lmaas(*args, home=tmp_path, env=env)
        assert result.returncode != 0
        assert "Traceback" in result.stderr and "ConnectError" in result.stderr


def test_a_server_that_never_answers_is_a_timeout_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accepts: the request waits in the backlog
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(typer.Exit) as ended, AdminClient(url, "k", timeout=0.3) as client:
            client.get("/admin/deployments")
    assert ended.value.exit_code == 1
    err = capsys.readouterr().err
    assert "did not answer within" in err and err.count("\n") == 1


class _Garbage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"{not json"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_error_no_command_expected_is_one_line(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        _one_line(lmaas("ps", "--url", url, "--key", "k", home=tmp_path), "--debug")
        assert (
            "Traceback" in lmaas("--debug", "ps", "--url", url, "--key", "k", home=tmp_path).stderr
        )
    finally:
        server.shutdown()
        server.server_close()


def test_the_token_file_is_private_and_replaced(tmp_path: Path) -> None:
    token = write_token(tmp_path)
    path = token_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_token(tmp_path) == token
    newer = write_token(tmp_path)
    assert newer != token and read_token(tmp_path) == newer
    remove_token(tmp_path, token)  # an older server's exit leaves the newer token alone
    assert read_token(tmp_path) == newer
    remove_token(tmp_path, newer)
    assert not path.exists() and read_token(tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left


def test_the_cli_sends_the_token_to_loopback_urls_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMAAS_HOME", str(tmp_path))
    assert local_key("http://127.0.0.1:8000") is None  # no server wrote one
    token = write_token(tmp_path)
    for url in ("http://127.0.0.1:8000", "http://localhost:9", "http://[::1]:8000"):
        assert local_key(url) == token
        with AdminClient(url, None) as client:
            assert client._http.headers["authorization"] == f"Bearer {token}"
    assert local_key("http://10.1.2.3:8000") is None
    assert local_key("https://lmaas.example.com") is None
    # A server that said its port gets the token on that port alone (not another user's
    # listener on another loopback port).
    on_port = write_token(tmp_path, 8123)
    assert local_key("http://127.0.0.1:8123") == on_port
    assert local_key("http://127.0.0.1:8000") is None
    assert local_key("http://localhost") is None  # port 80
    with AdminClient("http://127.0.0.1:8000", "lmaas-given") as client:  # a given key wins
        assert client._http.headers["authorization"] == "Bearer lmaas-given"


async def test_the_server_takes_the_token_from_this_machine_only(keys: KeyStore) -> None:
    settings = Settings(
        models=[ModelConfig(name="fake", path="/fake.gguf")],
        metrics=MetricsSettings(require_key=True),
    )
    auth = Authenticator(keys, bind_host="127.0.0.1")
    token = "lmaas-local-" + "x" * 43
    auth.trust_local_admin(token)
    app = create_app(settings, {"fake": FakeEngine("fake")}, auth=auth)

    async def get(client_host: str, key: str, **headers: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client_host, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            sent = {"authorization": f"Bearer {key}", **headers}
            return await c.get("/metrics", headers=sent)

    assert (await get("127.0.0.1", token)).status_code == 200
    assert (await get("::1", token)).status_code == 200
    remote = await get("203.0.113.9", token)
    assert remote.status_code == 401
    assert "this machine only" in check_error_envelope(remote.json())["message"]
    # A proxy on this machine makes every client look local: a forwarded request is not.
    proxied = await get("127.0.0.1", token, **{"x-forwarded-for": "127.0.0.1"})
    assert proxied.status_code == 401
    assert (await get("127.0.0.1", token, forwarded="for=127.0.0.1")).status_code == 401
    wrong = await get("127.0.0.1", "lmaas-local-" + "y" * 43)
    assert wrong.status_code == 401
