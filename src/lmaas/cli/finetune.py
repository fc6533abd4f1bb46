"""`lmaas finetune create|ls|show|cancel`: the fine-tuning API (``/v1/fine_tuning/jobs``) of a
running server. Any active key works (``--key`` / ``LMAAS_API_KEY``); a key sees the jobs it
created, an admin key every job.

``create`` takes the training and validation files as local JSONL paths (uploaded first with
purpose ``fine-tune``) or as the ids of files already uploaded (``file-...``). With
``--follow`` (and ``lmaas jobs logs ID --follow`` for a fine-tuning job, :func:`follow_admin`)
the run is shown live: a bar over the steps, the latest train and validation loss, learning
rate and tokens/s, a sparkline of the train loss, the job's messages above them, and at the
end the ``fine_tuned_model`` name. ``create --follow`` exits 0 once the job has succeeded and
1 when it failed or was cancelled.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from lmaas.cli.files import FILE_ID_RE, multipart_upload
from lmaas.cli.http import DEFAULT_URL, AdminClient, UrlOpt, admin_path, console, fail, upload

finetune_app = typer.Typer(
    help="Fine-tune and distill models (/v1/fine_tuning/jobs)", no_args_is_help=True
)

KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="LMAAS_API_KEY", help="API key (admin or inference)"),
]
JOBS: Final = "/v1/fine_tuning/jobs"
JOB_ID_RE: Final = re.compile(r"ftjob_[0-9a-f]{24}")
FINE_TUNE_KIND: Final = "fine_tune"  # the job kind of /admin/jobs (lmaas.jobs.fine_tune_input)
ENDED: Final = ("succeeded", "failed", "cancelled")
# /admin/jobs statuses in the fine-tuning API's words
_ADMIN_STATUS: Final = {
    "completed": "succeeded",
    "in_progress": "running",
    "finalizing": "running",
    "cancelling": "running",
    "expired": "failed",
}
_STATUS_STYLE: Final = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}
_SPARKS: Final = "▁▂▃▄▅▆▇█"
SPARK_WIDTH: Final = 40

JobId = Annotated[str, typer.Argument(metavar="ID", help="A fine-tuning job id (ftjob_...)")]


class Method(StrEnum):
    lora = "lora"
    full = "full"
    distillation = "distillation"


def check_job_id(job_id: str) -> str:
    if JOB_ID_RE.fullmatch(job_id) is None:
        fail(f"{job_id!r} is not a fine-tuning job id (ftjob_ and 24 hex digits)", code=2)
    return job_id


def _status(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status}[/{style}]" if style else status


def _when(epoch: int | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


# -- the live display ----------------------------------------------------------------------------


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """The last ``width`` values as block characters, lowest ``▁`` to highest ``█``."""
    shown = [v for v in values[-width:] if v == v]  # NaN would have no height
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    span = high - low
    top = len(_SPARKS) - 1
    return "".join(_SPARKS[round((v - low) / span * top) if span else 0] for v in shown)


def _number(value: Any, spec: str) -> str:
    return "-" if value is None else format(float(value), spec)


def _eta_text(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    minutes, rest = divmod(int(seconds), 60)
    return f"eta {minutes}m{rest:02d}s" if minutes else f"eta {rest}s"


@dataclass
class JobState:
    """What the display needs of the job itself, in the fine-tuning API's words."""

    status: str
    fine_tuned_model: str | None = None
    error: str | None = None
    eta_seconds: float | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


@dataclass
class Event:
    created_at: datetime
    level: str
    message: str
    data: dict[str, Any] | None

    @property
    def is_step(self) -> bool:
        data = self.data or {}
        return "step" in data and "train_loss" in data and not data.get("checkpoint")


@dataclass
class TrainingView:
    """The latest figures of a run, and how they are drawn."""

    step: int = 0
    total: int = 0
    train_loss: float | None = None
    valid_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    losses: list[float] = field(default_factory=list)
    job: JobState = field(default_factory=lambda: JobState("queued"))

    def add(self, data: dict[str, Any]) -> None:
        """One step's metrics (a validation loss stays shown until the next one)."""
        self.step = int(data["step"])
        self.total = int(data.get("total_steps") or self.total)
        self.train_loss = data.get("train_loss")
        if data.get("valid_loss") is not None:
            self.valid_loss = data["valid_loss"]
        self.learning_rate = data.get("learning_rate")
        self.tokens_per_second = data.get("tokens_per_second")
        if self.train_loss is not None:
            self.losses.append(float(self.train_loss))

    def render(self) -> RenderableType:
        status = Text.from_markup(_status(self.job.status))
        if not self.total:
            if self.job.ended:
                return Group(Text.assemble("no step was run: ", status))
            return Group(Text.assemble("waiting for the first step (", status, ")"))
        head = Table.grid(padding=(0, 1))
        head.add_row(
            Text("step"),
            ProgressBar(total=self.total, completed=self.step, width=40),
            Text(f"{self.step}/{self.total}"),
            Text(_eta_text(self.job.eta_seconds) if not self.job.ended else ""),
            status,
        )
        figures = Text(
            f"train loss {_number(self.train_loss, '.4f')}  "
            f"valid loss {_number(self.valid_loss, '.4f')}  "
            f"lr {_number(self.learning_rate, '.2e')}  "
            f"{_number(self.tokens_per_second, '.0f')} tokens/s"
        )
        return Group(head, figures, Text(f"loss {sparkline(self.losses)}"))


def _print_message(event: Event) -> None:
    style = {"warn": "yellow", "warning": "yellow", "error": "red"}.get(event.level)
    level = f"[{style}]{event.level:7}[/{style}]" if style else f"{event.level:7}"
    when = event.created_at.astimezone(UTC).strftime("%H:%M:%S")
    console.print(f"{when} {level} {escape(event.message)}")


class JobSource:
    """Where the display reads a job from: ``new_events()`` (each event once, oldest first)
    and ``job()``."""

    def new_events(self) -> Iterator[Event]:
        raise NotImplementedError

    def job(self) -> JobState:
        raise NotImplementedError


class FineTuningSource(JobSource):
    """``/v1/fine_tuning/jobs/{id}``: any key that sees the job."""

    def __init__(self, client: AdminClient, job_id: str) -> None:
        self.client, self.job_id, self.after = client, job_id, None

    def new_events(self) -> Iterator[Event]:
        while True:
            params: dict[str, Any] = {"limit": 100}
            if self.after is not None:
                params["after"] = self.after
            page = self.client.get(f"{JOBS}/{self.job_id}/events", params=params)
            for e in page["data"]:
                self.after = e["id"]
                when = datetime.fromtimestamp(e["created_at"], UTC)
                yield Event(when, e["level"], e["message"], e.get("data"))
            if not page["has_more"]:
                return

    def job(self) -> JobState:
        found = self.client.get(f"{JOBS}/{self.job_id}")
        finish = found.get("estimated_finish")
        return JobState(
            found["status"],
            found.get("fine_tuned_model"),
            (found.get("error") or {}).get("message"),
            None if finish is None else finish - time.time(),
        )


class AdminJobSource(JobSource):
    """``/admin/jobs/{id}``: an admin key."""

    def __init__(self, client: AdminClient, job_id: str) -> None:
        self.client, self.job_id, self.after = client, job_id, 0

    def new_events(self) -> Iterator[Event]:
        while True:
            params = {"after": self.after, "limit": 1000}
            page = self.client.get(admin_path("jobs", self.job_id, "events"), params=params)
            for e in page["data"]:
                self.after = e["seq"]
                when = datetime.fromisoformat(e["created_at"])
                yield Event(when, e["level"], e["message"], e.get("metrics"))
            if not page["has_more"]:
                return

    def job(self) -> JobState:
        found = self.client.get(admin_path("jobs", self.job_id))
        status = _ADMIN_STATUS.get(found["status"], found["status"])
        result = found.get("result") or {}
        return JobState(
            status,
            result.get("fine_tuned_model") if status == "succeeded" else None,
            (found.get("error") or {}).get("message"),
            found["progress"].get("eta_seconds"),
        )


def follow(
    source: JobSource, *, interval: float = 1.0, sleep: Callable[[float], None] = time.sleep
) -> JobState:
    """Show the job live until it has ended (and its last events are shown); how it ended."""
    view = TrainingView()
    ended = False
    # Not on a terminal (a pipe, a file) the last frame is printed once, after the end.
    drawn = console.is_terminal
    with Live(view.render(), console=console, refresh_per_second=4, transient=not drawn) as live:
        while True:
            for event in source.new_events():
                if event.is_step:
                    view.add(event.data or {})
                else:
                    _print_message(event)
            live.update(view.render())
            if ended:
                break
            # Once the job has ended, one more read shows the events written as it ended.
            view.job = source.job()
            ended = view.job.ended
            if not ended:
                sleep(interval)
    if not drawn:
        console.print(view.render())
    return view.job


def _report_end(job: JobState) -> None:
    if job.status == "succeeded":
        name = escape(job.fine_tuned_model or "-")
        console.print(f"fine_tuned_model: [bold]{name}[/bold]", highlight=False)
        return
    console.print(f"{_status(job.status)}: {escape(job.error or 'no model was made')}")


def follow_admin(client: AdminClient, job_id: str, *, interval: float) -> JobState:
    """``lmaas jobs logs ID --follow`` of a fine-tuning job: the live display."""
    try:
        job = follow(AdminJobSource(client, job_id), interval=interval)
    except KeyboardInterrupt:
        console.print("stopped following; the job goes on")
        raise typer.Exit(130) from None
    _report_end(job)
    return job


# -- the commands --------------------------------------------------------------------------------

FileOpt = Annotated[
    str | None,
    typer.Option(help="A JSONL file to upload (purpose fine-tune), or the id of one (file-...)"),
]


def _local_file(value: str | None, flag: str) -> Path | None:
    """The local path ``value`` names, ``None`` for a file id; the command ends if neither."""
    if value is None or FILE_ID_RE.fullmatch(value):
        return None
    path = Path(value)
    if not path.is_file():
        fail(f"{flag} {value!r} is neither a file here nor a file id (file-...)", code=2)
    return path


def _file_id(client: AdminClient, value: str, path: Path | None) -> str:
    if path is None:
        return value
    length, content_type, chunks = multipart_upload(path, "fine-tune")
    headers = {"Content-Type": content_type, "Content-Length": str(length)}
    f = upload(
        client,
        "/v1/files",
        chunks,
        total=length,
        label=f"push {escape(path.name)}",
        headers=headers,
    )
    return str(f["id"])


def method_body(
    method: Method,
    hyperparameters: dict[str, Any],
    teacher: str | None,
    student: str | None,
) -> dict[str, Any]:
    """OpenAI's ``method`` object for the flags given."""
    if method is not Method.distillation:
        if teacher is not None or student is not None:
            fail("--teacher and --student go with --method distillation", code=2)
        supervised = {"hyperparameters": hyperparameters, "adapter": method.value}
        return {"type": "supervised", "supervised": supervised}
    distillation: dict[str, Any] = {"hyperparameters": hyperparameters}
    if teacher is not None:
        distillation["teacher"] = teacher
    if student is not None:
        distillation["student"] = student
    return {"type": "distillation", "distillation": distillation}


@finetune_app.command("create")
def create(
    model: Annotated[str, typer.Option(help="The base model: a store model or a served name")],
    training_file: Annotated[str, typer.Option(help="A JSONL file, or the id of one (file-...)")],
    validation_file: FileOpt = None,
    suffix: Annotated[str | None, typer.Option(help="Part of the new model's name")] = None,
    method: Annotated[Method, typer.Option(help="How to train")] = Method.lora,
    epochs: Annotated[int | None, typer.Option(help="n_epochs (default: auto)")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Examples per step (default: auto)")
    ] = None,
    lr_multiplier: Annotated[
        float | None, typer.Option(help="learning_rate_multiplier (default: auto)")
    ] = None,
    teacher: Annotated[
        str | None, typer.Option(help="Distillation: the teacher (default: --model)")
    ] = None,
    student: Annotated[
        str | None,
        typer.Option(help="Distillation: 'half' (every other teacher layer) or a store model"),
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="A checkpoint every N steps too (default: per epoch)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="The run's seed")] = None,
    follow_job: Annotated[
        bool, typer.Option("--follow", "-f", help="Show the run live until it ends")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls")] = 1.0,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Start a fine-tuning job (LoRA by default) and print its id."""
    train_path = _local_file(training_file, "--training-file")
    valid_path = _local_file(validation_file, "--validation-file")
    hyperparameters = {
        name: value
        for name, value in (
            ("n_epochs", epochs),
            ("batch_size", batch_size),
            ("learning_rate_multiplier", lr_multiplier),
        )
        if value is not None
    }
    body: dict[str, Any] = {
        "model": model,
        "method": method_body(method, hyperparameters, teacher, student),
    }
    optional = {"suffix": suffix, "seed": seed, "checkpoint_every_steps": checkpoint_every}
    body |= {name: value for name, value in optional.items() if value is not None}
    with AdminClient(url, key, timeout=600) as c:
        body["training_file"] = _file_id(c, training_file, train_path)
        if validation_file is not None:
            body["validation_file"] = _file_id(c, validation_file, valid_path)
        job = c.post(JOBS, json=body)
        console.print(f"{job['id']} {_status(job['status'])}: {method.value} of {escape(model)}")
        if not follow_job:
            return
        try:
            ended = follow(FineTuningSource(c, job["id"]), interval=interval)
        except KeyboardInterrupt:
            console.print(f"stopped following; the job goes on (lmaas finetune show {job['id']})")
            raise typer.Exit(130) from None
    _report_end(ended)
    if ended.status != "succeeded":
        raise typer.Exit(1)


def _method_text(method: dict[str, Any]) -> str:
    if method.get("type") == "distillation":
        return "distillation"
    return str((method.get("supervised") or {}).get("adapter", "lora"))


def _steps(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    return f"{progress.get('step', 0)}/{progress.get('total_steps', 0) or '-'}"


@finetune_app.command("ls")
def list_jobs(
    limit: Annotated[int, typer.Option(min=1, max=100, help="Rows")] = 20,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """The newest fine-tuning jobs the key can see, one row each."""
    with AdminClient(url, key) as c:
        page = c.get(JOBS, params={"limit": limit})
    table = Table("id", "model", "method", "status", "steps", "fine_tuned_model", "created")
    for job in page["data"]:
        table.add_row(
            job["id"],
            escape(job["model"]),
            _method_text(job["method"]),
            _status(job["status"]),
            _steps(job),
            escape(job["fine_tuned_model"] or "-"),
            _when(job["created_at"]),
        )
    console.print(table)
    if page["has_more"]:
        console.print(f"(more jobs: raise --limit above {limit})")


@finetune_app.command("show")
def show(job_id: JobId, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """One fine-tuning job in full, and its checkpoints."""
    check_job_id(job_id)
    with AdminClient(url, key) as c:
        job = c.get(f"{JOBS}/{job_id}")
        points = c.get(f"{JOBS}/{job_id}/checkpoints", params={"limit": 100})["data"]
    error = job.get("error")
    rows = [
        ("id", job["id"]),
        ("model", escape(job["model"])),
        ("method", _method_text(job["method"])),
        ("status", _status(job["status"])),
        ("steps", _steps(job)),
        ("fine_tuned_model", escape(job["fine_tuned_model"] or "-")),
        ("store version", escape(job.get("model_version") or "-")),
        ("training file", job["training_file"]),
        ("validation file", job["validation_file"] or "-"),
        ("hyperparameters", escape(json.dumps(job["hyperparameters"]))),
        ("seed", str(job["seed"])),
        ("trained tokens", str(job["trained_tokens"] or "-")),
        ("created", _when(job["created_at"])),
        ("finished", _when(job["finished_at"])),
        ("error", escape(f"{error['code']}: {error['message']}") if error else "-"),
    ]
    table = Table("field", "value", show_header=False)
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if points:
        kept = Table("checkpoint", "step", "train loss", "valid loss", "created")
        for point in points:
            metrics = point["metrics"]
            kept.add_row(
                point["id"],
                str(point["step_number"]),
                _number(metrics.get("train_loss"), ".4f"),
                _number(metrics.get("valid_loss"), ".4f"),
                _when(point["created_at"]),
            )
        console.print(kept)


@finetune_app.command("cancel")
def cancel(job_id: JobId, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Cancel a job: it stops before its next step, keeping a checkpoint of where it was."""
    check_job_id(job_id)
    with AdminClient(url, key) as c:
        job = c.post(f"{JOBS}/{job_id}/cancel")
    shown = job["status"] if job["status"] in ENDED else "cancelling"
    console.print(f"{job['id']}: {_status(shown)}")
