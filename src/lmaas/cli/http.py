"""The one HTTP client of the commands that talk to a running server's admin API.

- ``--url`` / ``LMAAS_URL`` and ``--key`` / ``LMAAS_API_KEY`` (:data:`UrlOpt`, :data:`KeyOpt`);
  without a key, a loopback URL gets the local admin token a server on this machine wrote under
  ``LMAAS_HOME`` (:mod:`lmaas.local_admin`), which is never sent elsewhere.
- :class:`AdminClient`: an error envelope becomes ``error <status>: <message>`` on stderr and
  exit code 1; a server that cannot be reached, or a URL that is not ``http(s)://``, becomes
  one line on stderr too (exit 1, resp. 2), never a traceback.
- :func:`admin_path`: names are checked (:mod:`lmaas.names`) before they become URL path
  segments, and quoted, so a name can never point a request at another resource.
- :func:`progress`: the progress bar of uploads and downloads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Final, NoReturn
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from lmaas.db import DEFAULT_HOME, HOME_ENV
from lmaas.local_admin import read_token
from lmaas.names import is_alias, is_served_name, is_store_model_name

DEFAULT_URL: Final = "http://127.0.0.1:8000"
# `lmaas --debug`: a connection failure raises (the traceback shows) instead of one line.
DEBUG = False
CHUNK: Final = 1 << 20

UrlOpt = Annotated[str, typer.Option("--url", envvar="LMAAS_URL", help="Server URL")]
KeyOpt = Annotated[str | None, typer.Option("--key", envvar="LMAAS_API_KEY", help="Admin API key")]

# Piped output (scripts, tests) gets wide lines instead of cells cut to fit 80 columns. No
# emoji codes: names such as ``ft:base:pirate:ftjob_...`` hold ``:pirate:``.
console = Console(width=None if sys.stdout.isatty() else 200, emoji=False)


def fail(message: str, *, code: int = 1) -> NoReturn:
    """End the command with ``error: <message>`` as one line on stderr."""
    typer.echo(f"{typer.style('error', fg='red')}: {_one_line(message)}", err=True)
    raise typer.Exit(code)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def server_url(url: str) -> str:
    """``url`` without a trailing slash; anything but an ``http(s)://host`` URL ends the
    command (exit 2) with a hint, before any request."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        fail(
            f"--url (or LMAAS_URL) must be a server URL such as {DEFAULT_URL}, not {url!r}",
            code=2,
        )
    return url.rstrip("/")


class AdminClient:
    """``with AdminClient(url, key) as c: c.get(path)``: JSON in, JSON out, errors as above."""

    def __init__(self, url: str, key: str | None, *, timeout: float = 60.0) -> None:
        self.url = server_url(url)
        self._timeout = timeout
        key = key or local_key(self.url)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.close()
        if isinstance(exc, httpx.TransportError) and not DEBUG:
            fail(self._transport_message(exc))

    def _transport_message(self, exc: httpx.TransportError) -> str:
        if isinstance(exc, httpx.ConnectError):
            return (
                f"cannot reach the server at {self.url} ({exc}); is `lmaas serve` running "
                "there? Point --url or LMAAS_URL at it"
            )
        if isinstance(exc, httpx.TimeoutException):
            return f"the server at {self.url} did not answer within {self._timeout:.0f}s"
        return f"the connection to {self.url} failed: {exc or type(exc).__name__}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON the server answered (``None`` for an empty body); an error status ends
        the command."""
        return checked(self._http.request(method, path, **kwargs))

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    @contextmanager
    def stream(self, path: str, headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        """A streamed ``GET`` whose status is a success (an error status ends the command)."""
        with self._http.stream("GET", path, headers=headers) as response:
            if response.status_code >= 400:
                response.read()
                checked(response)
            yield response


def local_key(url: str) -> str | None:
    """The local admin token of a server on this machine, for a loopback ``url`` only."""
    from lmaas.gateway.auth import is_loopback  # (the gateway's rule; imported when needed)

    parsed = httpx.URL(url)
    if not is_loopback(parsed.host):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return read_token(Path(os.environ.get(HOME_ENV) or DEFAULT_HOME), port)


def checked(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        typer.echo(
            f"{typer.style(f'error {response.status_code}', fg='red')}: {_one_line(message)}",
            err=True,
        )
        raise typer.Exit(1)
    if response.content and response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return None


# -- names in URL paths ----------------------------------------------------------------------------


def check_model_name(name: str) -> str:
    """``name`` when it is a model name of the store, else the command ends (exit 2)."""
    if not is_store_model_name(name):
        fail(
            f"{name!r} is not a model name: 1-128 characters of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit",
            code=2,
        )
    return name


def check_version_ref(ref: str) -> str:
    """A version number or an alias (``3``, ``latest``, ``prod``), else the command ends."""
    if not (ref.isascii() and ref.isdigit()) and not is_alias(ref):
        fail(f"{ref!r} is neither a version number nor an alias", code=2)
    return ref


def check_alias(alias: str) -> str:
    if not is_alias(alias):
        fail(
            f"{alias!r} is not an alias: 1-64 characters of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter",
            code=2,
        )
    return alias


def check_served_name(name: str) -> str:
    """A deployment's name (what clients put in ``model``), else the command ends."""
    if not is_served_name(name) or any(part in (".", "..") for part in name.split("/")):
        fail(
            f"{name!r} is not a deployment name: 1-128 characters of A-Z, a-z, 0-9, "
            "'.', '_', ':', '/' and '-', starting with a letter or digit",
            code=2,
        )
    return name


def admin_path(*parts: str) -> str:
    """``/admin/<part>/<part>...`` with every part quoted whole (a ``/`` in a name stays part
    of the name). Check names with the functions above first."""
    return "/admin/" + "/".join(quote(part, safe="") for part in parts)


def size_text(n: int | None) -> str:
    """A byte count for people: ``512 B``, ``1.5 MiB`` (``-`` when unknown)."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def progress() -> Progress:
    """A transfer bar: bytes, speed, time left; call ``advance(task, n)`` per chunk."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def upload(
    client: AdminClient,
    path: str,
    chunks: Iterable[bytes],
    *,
    total: int,
    label: str,
    headers: dict[str, str],
) -> Any:
    """POST ``chunks`` (``total`` bytes) to ``path`` with a transfer bar named ``label``."""
    with progress() as bar:
        task = bar.add_task(label, total=total)

        def body() -> Iterator[bytes]:
            for chunk in chunks:
                bar.advance(task, len(chunk))
                yield chunk

        return client.post(path, content=body(), headers=headers)
