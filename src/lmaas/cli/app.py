"""The `lmaas` command: one Typer app, one module per command group."""

from __future__ import annotations

import typer

from lmaas.cli.classifiers import classifiers_app
from lmaas.cli.deploy import deploy, ps, scale, undeploy
from lmaas.cli.files import files_app
from lmaas.cli.finetune import finetune_app
from lmaas.cli.jobs import jobs_app
from lmaas.cli.keys import keys_app
from lmaas.cli.models import models_app
from lmaas.cli.requests import requests_app
from lmaas.cli.serve import serve
from lmaas.config import SHIPPED_MODELS

app = typer.Typer(help="lmaas: language models as a service", no_args_is_help=True)

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


@app.command("shipped-models")
def shipped_models() -> None:
    """List the models that ship with the install."""
    for name, shipped in SHIPPED_MODELS.items():
        typer.echo(f"{name}\t{shipped.description}")


def main() -> None:
    app()
