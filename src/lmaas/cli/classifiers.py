"""`lmaas classifiers train`: a classifier from a JSONL file of labelled examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from lmaas.cli.http import DEFAULT_URL, AdminClient, KeyOpt, UrlOpt
from lmaas.config import DEFAULT_EMBEDDING_MODEL

classifiers_app = typer.Typer(help="Classifiers trained from labelled examples")


def read_examples(path: Path) -> list[dict[str, str]]:
    """``{"text": ..., "label": ...}`` per line; blank lines are skipped."""
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            examples.append({"text": str(row["text"]), "label": str(row["label"])})
        except (ValueError, KeyError, TypeError) as exc:
            raise typer.BadParameter(
                f'line {number}: expected {{"text": ..., "label": ...}} ({exc})',
                param_hint="--data",
            ) from exc
    return examples


@classifiers_app.command("train")
def train(
    name: Annotated[str, typer.Argument(help="Model name of the classifier")],
    data: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, readable=True, help="JSONL: text, label"),
    ],
    model: Annotated[
        str, typer.Option(help="Served embedding model to train on")
    ] = DEFAULT_EMBEDDING_MODEL,
    deploy: Annotated[bool, typer.Option(help="Serve the classifier once trained")] = True,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Train NAME on the examples in --data; it then answers /v1/classify."""
    body: dict[str, Any] = {
        "name": name,
        "model": model,
        "examples": read_examples(data),
        "deploy": deploy,
    }
    with AdminClient(url, key, timeout=600) as c:
        out = c.post("/admin/classifiers", json=body)
    deployed = out["deployment"]["state"] if out.get("deployment") else "not deployed"
    typer.echo(
        f"{out['name']} version {out['version']}: labels {', '.join(out['labels'])}; "
        f"{out['examples']} examples, train accuracy {out['train_accuracy']:.3f}, "
        f"{out['train_seconds']:.1f}s; {deployed}"
    )
