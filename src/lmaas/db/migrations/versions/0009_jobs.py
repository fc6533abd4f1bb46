"""Jobs: ``jobs`` (one row per job, with its runner's lease), ``job_events`` (each job's
append-only log) and ``job_items`` (the finished lines of a job, by ``custom_id``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUS = (
    "status IN ('queued', 'in_progress', 'finalizing', 'cancelling', 'completed', 'failed', "
    "'cancelled')"
)


def _when(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("owner_key_id", sa.String(12), nullable=True),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("input_file_id", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        _when("created_at", nullable=False),
        _when("started_at"),
        _when("finalizing_at"),
        _when("finished_at"),
        _when("cancel_requested_at"),
        sa.Column("progress_total", sa.Integer(), nullable=False),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_failed", sa.Integer(), nullable=False),
        _when("eta_at"),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        _when("lease_expires_at"),
        _when("heartbeat_at"),
        sa.Column("last_event", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.CheckConstraint(_STATUS, name=op.f("ck_jobs_status")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_jobs_attempts_not_negative")),
        sa.CheckConstraint(
            "progress_done >= 0 AND progress_failed >= 0 AND progress_total >= 0",
            name=op.f("ck_jobs_progress_not_negative"),
        ),
    )
    op.create_index(
        op.f("ix_jobs_status_priority_created_at"), "jobs", ["status", "priority", "created_at"]
    )
    op.create_index(op.f("ix_jobs_kind_created_at"), "jobs", ["kind", "created_at"])
    op.create_index(op.f("ix_jobs_owner_key_id"), "jobs", ["owner_key_id"])
    op.create_index(op.f("ix_jobs_input_file_id"), "jobs", ["input_file_id"])
    op.create_table(
        "job_events",
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        _when("created_at", nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "seq", name=op.f("pk_job_events")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "level IN ('info', 'warning', 'error')", name=op.f("ck_job_events_level")
        ),
    )
    op.create_table(
        "job_items",
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("custom_id", sa.String(512), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        _when("created_at", nullable=False),
        sa.PrimaryKeyConstraint("job_id", "custom_id", name=op.f("pk_job_items")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_items_job_id_jobs"), ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("job_items")
    op.drop_table("job_events")
    op.drop_index(op.f("ix_jobs_input_file_id"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_owner_key_id"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_kind_created_at"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_status_priority_created_at"), table_name="jobs")
    op.drop_table("jobs")
