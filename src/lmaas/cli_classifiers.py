"""`lmaas classifiers train`: a classifier from a JSONL file of labelled examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from lmaas.config import DEFAULT_EMBEDDING_MODEL

classifiers_app = typer.Typer(help="Classifiers trained from labelled examples")

UrlOpt = Annotated[str, typer.Option("--url", envvar="LMAAS_URL", help="Server URL")]
KeyOpt = Annotated[str | None, typer.Option("--key", envvar="LMAAS_API_KEY", help="Admin API key")]


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
    url: UrlOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
) -> None:
    """Train NAME on the examples in --data; it then answers /v1/classify."""
    body: dict[str, Any] = {
        "name": name,
        "model": model,
        "examples": read_examples(data),
        "deploy": deploy,
    }
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(f"{url.rstrip('/')}/admin/classifiers", json=body, headers=headers, timeout=600)
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:500]
        typer.echo(f"error {r.status_code}: {message}", err=True)
        raise typer.Exit(1)
    out = r.json()
    deployed = out["deployment"]["state"] if out.get("deployment") else "not deployed"
    typer.echo(
        f"{out['name']} version {out['version']}: labels {', '.join(out['labels'])}; "
        f"{out['examples']} examples, train accuracy {out['train_accuracy']:.3f}, "
        f"{out['train_seconds']:.1f}s; {deployed}"
    )
