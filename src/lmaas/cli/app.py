"""The `lmaas` command: one Typer app, one module per command group.

An error the command did not expect ends it with one line on stderr (exit 1); ``--debug``
(anywhere on the line) or ``LMAAS_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import httpx
import typer

from lmaas.cli import http
from lmaas.cli.classifiers import classifiers_app
from lmaas.cli.deploy import deploy, ps, scale, undeploy
from lmaas.cli.files import files_app
from lmaas.cli.finetune import finetune_app
from lmaas.cli.jobs import jobs_app
from lmaas.cli.keys import keys_app
from lmaas.cli.models import models_app
from lmaas.cli.plan import plan, profile
from lmaas.cli.requests import requests_app
from lmaas.cli.serve import serve
from lmaas.config import SHIPPED_MODELS

app = typer.Typer(
    help="lmaas: language models as a service",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", envvar="LMAAS_DEBUG", help="Show the traceback of an unexpected error"
        ),
    ] = False,
) -> None:
    """lmaas: language models as a service"""
    http.DEBUG = debug


app.command()(serve)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(requests_app, name="requests")
app.add_typer(classifiers_app, name="classifiers")
app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")
app.add_typer(finetune_app, name="finetune")
app.command()(deploy)
app.command()(scale)
app.command()(undeploy)
app.command()(ps)
app.command()(profile)
app.command()(plan)


@app.command("shipped-models")
def shipped_models() -> None:
    """List the models that ship with the install."""
    for name, shipped in SHIPPED_MODELS.items():
        typer.echo(f"{name}\t{shipped.description}")


def main() -> None:
    argv = sys.argv[1:]
    if "--debug" in argv:  # after a command too: the option reaches it as LMAAS_DEBUG
        os.environ["LMAAS_DEBUG"] = "1"
    debug = os.environ.get("LMAAS_DEBUG", "").lower() not in ("", "0", "false")
    try:
        app(args=[a for a in argv if a != "--debug"], prog_name="lmaas")
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"{typer.style('error', fg='red')}: {_unexpected(exc)}", err=True)
        raise SystemExit(1) from None


def _unexpected(exc: Exception) -> str:
    """One line for an error no command handled (a connection lost mid-transfer, ...)."""
    if isinstance(exc, httpx.ConnectError):
        text = f"cannot reach the server ({exc}); is `lmaas serve` running? Check --url"
    elif isinstance(exc, httpx.TimeoutException):
        text = f"the server did not answer in time ({type(exc).__name__})"
    elif isinstance(exc, httpx.HTTPError):
        text = f"the connection to the server failed: {exc or type(exc).__name__}"
    else:
        text = f"unexpected {type(exc).__name__}: {exc}"
    return " ".join(f"{text} (run with --debug for the traceback)".split())
