"""The admin CLI's own failures: a server it cannot reach, a URL that is not one, and names
that would point a request at another resource, each answered with one line and no request."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner, Result

from lmaas.cli.app import app
from lmaas.cli.http import admin_path


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused (kept bound, so no other
    process can take it during the test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket that never accepts: any connection attempt stays in its backlog."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={"LMAAS_URL": "", **(env or {})})


def assert_one_line_error(result: Result, exit_code: int, *fragments: str) -> str:
    assert result.exit_code == exit_code, (result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit)  # an ended command, not a crash
    assert result.stdout == ""
    line = result.stderr.rstrip("\n")
    assert "\n" not in line and line.startswith("error"), result.stderr
    for fragment in fragments:
        assert fragment in line, line
    return line


@pytest.mark.parametrize(
    "command",
    [
        ("models", "ls"),
        ("models", "show", "tiny"),
        ("models", "pull", "tiny:prod"),
        ("models", "rm", "tiny:2"),
        ("requests", "ls"),
        ("ps",),
        ("undeploy", "chatbot"),
    ],
)
def test_a_server_that_is_down_is_one_line(command: tuple[str, ...], closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    result = run(*command, "--url", url, "--key", "lmaas-x-y")
    assert_one_line_error(result, 1, f"cannot reach the server at {url}", "lmaas serve")


def test_the_url_comes_from_the_environment(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    result = run("models", "ls", env={"LMAAS_URL": url})
    assert_one_line_error(result, 1, f"cannot reach the server at {url}")


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "localhost:8000", "ftp://host", "http://"])
def test_a_url_without_http_is_refused_before_any_request(url: str) -> None:
    result = run("models", "ls", "--url", url)
    assert_one_line_error(result, 2, "--url", repr(url), "http://127.0.0.1:8000")


@pytest.mark.parametrize(
    ("command", "refused"),
    [
        (("models", "rm", "../deployments/victim"), "'../deployments/victim'"),
        (("models", "rm", "tiny:../../deployments/victim"), "'../../deployments/victim'"),
        (("models", "show", "../requests"), "'../requests'"),
        (("models", "pull", "tiny:../../deployments/x"), "'../../deployments/x'"),
        (("models", "push", "../x", __file__), "'../x'"),
        (("models", "alias", "tiny", "../../deployments/x", "1"), "'../../deployments/x'"),
        (("undeploy", "a/../../models/tiny"), "'a/../../models/tiny'"),
        (("scale", "../models/tiny", "0"), "'../models/tiny'"),
    ],
)
def test_names_that_leave_their_resource_are_refused(
    command: tuple[str, ...], refused: str, listener: socket.socket
) -> None:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    result = run(*command, "--url", url)
    assert_one_line_error(result, 2, refused)
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever connected


def test_path_segments_are_quoted_whole() -> None:
    assert admin_path("deployments", "org/model:v1") == "/admin/deployments/org%2Fmodel%3Av1"
    assert admin_path("models", "tiny", "versions", "2") == "/admin/models/tiny/versions/2"
