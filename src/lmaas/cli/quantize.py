"""`lmaas models quantize NAME[:REF] --type Q4_0 --type Q8_0 [--eval-file ID] [--wait]`: a
quantization job (``POST /admin/models/{name}/versions/{ref}/quantize``); with ``--wait``, a
live bar of its steps until it ends, then its figures side by side."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from lmaas.cli.http import (
    DEFAULT_URL,
    AdminClient,
    KeyOpt,
    UrlOpt,
    admin_path,
    check_model_name,
    check_version_ref,
    console,
    fail,
    size_text,
)
from lmaas.cli.jobs import FINISHED


def quantize(
    reference: Annotated[
        str, typer.Argument(metavar="NAME[:REF]", help="A GGUF version (latest by default)")
    ],
    types: Annotated[
        list[str],
        typer.Option("--type", "-t", help="Q4_0, Q4_1, Q8_0, Q4_K_M or F16; repeat for more"),
    ],
    eval_file: Annotated[
        str | None,
        typer.Option(help="A fine-tune file whose text is the held-out text (else a built-in)"),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job, then print its figures")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls")] = 1.0,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Quantize a GGUF version to each --type (new versions of the model, aliased q4_0, ...),
    each measured beside the source: held-out perplexity, tokens/s and file size."""
    name, _, ref = reference.partition(":")
    path = admin_path(
        "models", check_model_name(name), "versions", check_version_ref(ref or "latest"), "quantize"
    )
    body: dict[str, Any] = {"types": [t.upper() for t in types]}
    if eval_file is not None:
        body["eval_file"] = eval_file
    with AdminClient(url, key) as c:
        job = c.post(path, json=body)
        source = f"{job['input']['model']}:{job['input']['number']}"
        console.print(f"{job['id']}: {', '.join(body['types'])} of {source} queued")
        if not wait:
            console.print(f"follow it with: lmaas jobs logs {job['id']} --follow")
            return
        job = _follow(c, job["id"], interval)
    print_figures(job)
    if job["status"] != "completed":
        error = (job.get("error") or {}).get("message", job["status"])
        fail(f"{job['id']} {job['status']}: {error}")


def _follow(c: AdminClient, job_id: str, interval: float) -> dict[str, Any]:
    """Poll the job and its events until it has ended; each type's figures as they come."""
    after, description = 0, "queued"
    columns = (SpinnerColumn(), "{task.description}", BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(description, total=None)
        while True:
            job: dict[str, Any] = c.get(admin_path("jobs", job_id))
            page = c.get(admin_path("jobs", job_id, "events"), params={"after": after})
            for event in page["data"]:
                after, description = event["seq"], event["message"]
                if "perplexity" in (event["metrics"] or {}):
                    bar.console.print(escape(event["message"]))
            progress = job["progress"]
            bar.update(
                task,
                total=progress["total"] or None,
                completed=progress["done"],
                description=escape(description[:70]),
            )
            if job["status"] in FINISHED and not page["has_more"]:
                return job
            time.sleep(interval)


def print_figures(job: dict[str, Any]) -> None:
    """The source and each quantized version of a quantization job, side by side."""
    result = job.get("result") or {}
    rows = ([result["source"]] if result.get("source") else []) + result.get("versions", [])
    if not rows:
        return
    table = Table("type", "version", "alias", "size", "perplexity", "tokens/s")
    for row in rows:
        table.add_row(
            row["type"],
            f"{row['model']}:{row['version']}",
            row["alias"] or "(source)",
            size_text(row["size_bytes"]),
            f"{row['perplexity']:.3f}",
            f"{row['tokens_per_second']:.1f}",
        )
    console.print(table)
    console.print(f"held-out text: {escape(str(result.get('held_out')))}")
