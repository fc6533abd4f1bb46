"""The jobs' tables, created and changed only by the Alembic migrations (``0009_jobs``,
``0010_evals``).

``jobs``: one row per job (a batch, later an eval run): who asked, what for, where it stands,
and the lease of the runner working on it. ``job_events``: the append-only log of each job,
numbered from 1 per job. ``job_items``: the result of each line a job has finished, keyed by
the line's ``custom_id``, so that a run resumed after a crash skips what is done.
:class:`lmaas.jobs.store.JobStore` and :class:`lmaas.jobs.leases.JobLeases` are the only code
that reads and writes them (``job_checkpoints``, ``0016_job_checkpoints``:
:class:`lmaas.jobs.checkpoint_store.JobCheckpoints`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from lmaas.db import Base

MAX_JOB_ID: Final = 40
MAX_CUSTOM_ID: Final = 512
STATUS_CHECK: Final = (
    "status IN ('queued', 'in_progress', 'finalizing', 'cancelling', 'completed', 'failed', "
    "'cancelled', 'expired')"
)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(STATUS_CHECK, name="status"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        CheckConstraint(
            "progress_done >= 0 AND progress_failed >= 0 AND progress_total >= 0",
            name="progress_not_negative",
        ),
        # The dispatcher's order: highest priority first, then oldest.
        Index(None, "status", "priority", "created_at"),
        Index(None, "kind", "created_at"),
    )

    # "<kind prefix>_" + 14 hex digits of the creation time in microseconds + 10 random ones.
    id: Mapped[str] = mapped_column(String(MAX_JOB_ID), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    # The API key that asked for it (NULL: an open server); the job acts as that key.
    owner_key_id: Mapped[str | None] = mapped_column(String(12), nullable=True, index=True)
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The file the job reads, which cannot be deleted while the job is not finished.
    input_file_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    progress_total: Mapped[int] = mapped_column(Integer)
    progress_done: Mapped[int] = mapped_column(Integer)  # failed ones included
    progress_failed: Mapped[int] = mapped_column(Integer)
    eta_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The deadline: a job not finished by then ends `expired` (a batch's completion window).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The seq of the job's newest event (events are numbered 1, 2, ... per job).
    last_event: Mapped[int] = mapped_column(Integer)
    # What the job belongs to: the eval of an eval run (``0010_evals``).
    group_id: Mapped[str | None] = mapped_column(String(MAX_JOB_ID), nullable=True, index=True)


class JobEventRow(Base):
    __tablename__ = "job_events"
    __table_args__ = (CheckConstraint("level IN ('info', 'warning', 'error')", name="level"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class JobItemRow(Base):
    """One finished line of a job: its output, ready to be written to the job's result."""

    __tablename__ = "job_items"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    custom_id: Mapped[str] = mapped_column(String(MAX_CUSTOM_ID), primary_key=True)
    line: Mapped[int] = mapped_column(Integer)  # in the input file, from 1
    ok: Mapped[bool] = mapped_column(Boolean)
    output: Mapped[str] = mapped_column(Text)  # one JSON line, without its newline
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EvalRow(Base):
    """An eval (``/v1/evals``): what its items look like and how each is graded. Its runs are
    jobs of kind ``eval_run`` whose ``group_id`` is the eval's id."""

    __tablename__ = "evals"

    id: Mapped[str] = mapped_column(String(MAX_JOB_ID), primary_key=True)
    owner_key_id: Mapped[str | None] = mapped_column(String(12), nullable=True, index=True)
    name: Mapped[str] = mapped_column(String(256))
    data_source_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    testing_criteria: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column(
        "metadata", JSON(none_as_null=True), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobCheckpointRow(Base):
    """The newest training checkpoint a fine-tune on another node kept at the gateway: a file
    (purpose ``fine-tune-checkpoint``, the job's owner's) holding it as a tar. No foreign key to
    ``jobs``: a deleted job's row stays until the sweep has deleted its file too."""

    __tablename__ = "job_checkpoints"
    __table_args__ = (CheckConstraint("step >= 0", name="step_not_negative"),)

    job_id: Mapped[str] = mapped_column(String(MAX_JOB_ID), primary_key=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), unique=True)
    step: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
