"""`lmaas jobs ls|show|cancel|logs`: the jobs (batches, eval runs, fine-tuning) of a running
server, over its admin API (``/admin/jobs``, an admin key). ``logs --follow`` polls the job's
event log until the job has finished and every event is shown (a fine-tuning job's as the live
display of :mod:`lmaas.cli.finetune`)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Any, Final

import typer
from rich.markup import escape
from rich.table import Table

from lmaas.cli.finetune import FINE_TUNE_KIND, follow_admin
from lmaas.cli.http import DEFAULT_URL, AdminClient, KeyOpt, UrlOpt, admin_path, console

jobs_app = typer.Typer(help="Jobs of a running server: batches, eval runs", no_args_is_help=True)

FINISHED: Final = ("completed", "failed", "cancelled", "expired")
_STATUS_STYLE: Final = {
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "expired": "yellow",
    "cancelling": "yellow",
}
JobId = Annotated[str, typer.Argument(metavar="ID", help="A job id (batch_...)")]


def _when(value: str | None) -> str:
    if value is None:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")


def _status(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status}[/{style}]" if style else status


def _progress(job: dict[str, Any]) -> str:
    p = job["progress"]
    text = f"{p['done']}/{p['total']}"
    if p["failed"]:
        text += f" ({p['failed']} failed)"
    return text


def _eta(job: dict[str, Any]) -> str:
    eta = job["progress"]["eta_seconds"]
    if eta is None:
        return "-"
    minutes, seconds = divmod(int(eta), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _error(job: dict[str, Any]) -> str:
    error = job.get("error") or {}
    return escape(str(error.get("message", ""))[:60])


@jobs_app.command("ls")
def list_jobs(
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind (batch, ...)")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only these statuses, comma-separated (e.g. queued)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Rows")] = 50,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """The newest jobs, one row each."""
    params: dict[str, str | int] = {"limit": limit}
    if kind:
        params["kind"] = kind
    if status:
        params["status"] = status
    with AdminClient(url, key) as c:
        page = c.get("/admin/jobs", params=params)
    table = Table("id", "kind", "status", "progress", "eta", "tries", "key", "created", "error")
    for job in page["data"]:
        table.add_row(
            job["id"],
            job["kind"],
            _status(job["status"]),
            _progress(job),
            _eta(job),
            str(job["attempts"]),
            job["owner_key_id"] or "-",
            _when(job["created_at"]),
            _error(job),
        )
    console.print(table)
    if page["has_more"]:
        console.print(f"(more jobs: raise --limit above {limit})")


@jobs_app.command("show")
def show(job_id: JobId, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """One job in full: status, progress, lease, input, result, error."""
    with AdminClient(url, key) as c:
        job = c.get(admin_path("jobs", job_id))
    table = Table("field", "value", show_header=False)
    lease = job["lease"]
    rows = [
        ("id", job["id"]),
        ("kind", job["kind"]),
        ("status", _status(job["status"])),
        ("progress", _progress(job)),
        ("eta", _eta(job)),
        ("owner key", job["owner_key_id"] or "-"),
        ("created", _when(job["created_at"])),
        ("started", _when(job["started_at"])),
        ("finished", _when(job["finished_at"])),
        ("expires", _when(job.get("expires_at"))),
        ("duration", "-" if job["duration_seconds"] is None else f"{job['duration_seconds']}s"),
        ("attempts", str(job["attempts"])),
        ("runner", lease["owner"] or "-"),
        ("lease until", _when(lease["expires_at"])),
        ("input", escape(json.dumps(job["input"]))),
        ("result", escape(json.dumps(job["result"])) if job["result"] else "-"),
        ("error", escape(json.dumps(job["error"])) if job["error"] else "-"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


@jobs_app.command("cancel")
def cancel(job_id: JobId, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Cancel a job: a queued one at once, a running one once its runner has stopped."""
    with AdminClient(url, key) as c:
        job = c.post(admin_path("jobs", job_id, "cancel"))
    console.print(f"{job['id']}: {_status(job['status'])}")


def _print_event(event: dict[str, Any]) -> None:
    level = event["level"]
    style = {"warning": "yellow", "error": "red"}.get(level)
    shown = f"[{style}]{level:7}[/{style}]" if style else f"{level:7}"
    metrics = f"  {escape(json.dumps(event['metrics']))}" if event["metrics"] else ""
    console.print(
        f"{event['seq']:>5} {_when(event['created_at'])} {shown} "
        f"{escape(event['message'])}{metrics}"
    )


@jobs_app.command("logs")
def logs(
    job_id: JobId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until it ends")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls")] = 1.0,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """The job's event log, oldest first; a fine-tuning job's followed as a live display of
    its steps and losses."""
    after, ended = 0, False
    events_path = admin_path("jobs", job_id, "events")
    with AdminClient(url, key) as c:
        if follow and c.get(admin_path("jobs", job_id))["kind"] == FINE_TUNE_KIND:
            follow_admin(c, job_id, interval=interval)
            return
        while True:
            page = c.get(events_path, params={"after": after, "limit": 1000})
            for event in page["data"]:
                _print_event(event)
                after = event["seq"]
            if page["has_more"]:
                continue
            if not follow or ended:
                return
            # Once the job has ended, one more read shows the events written as it ended.
            ended = c.get(admin_path("jobs", job_id))["status"] in FINISHED
            if not ended:
                time.sleep(interval)
