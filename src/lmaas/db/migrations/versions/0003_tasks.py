"""Task records: one row per inference request.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        # BIGINT does not autoincrement on SQLite; only INTEGER PRIMARY KEY (the rowid) does.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task_type", sa.String(32), nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("api_key_id", sa.String(32), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("queue_time_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.CheckConstraint("status IN ('ok', 'error', 'cancelled')", name=op.f("ck_tasks_status")),
    )
    op.create_index(op.f("ix_tasks_received_at"), "tasks", ["received_at"])
    op.create_index(op.f("ix_tasks_model_received_at"), "tasks", ["model", "received_at"])
    op.create_index(op.f("ix_tasks_status"), "tasks", ["status"])
    op.create_index(op.f("ix_tasks_api_key_id"), "tasks", ["api_key_id"])
    op.create_index(op.f("ix_tasks_request_id"), "tasks", ["request_id"])


def downgrade() -> None:
    op.drop_table("tasks")
