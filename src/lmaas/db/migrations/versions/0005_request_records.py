"""Request records: the ``tasks`` table becomes ``request_records`` and its ``task_type``
column ``endpoint``, so that "task" names only the worker's non-generation work.

The table is copied rather than renamed so that its indexes and constraints take the names the
naming convention gives the new table on every database.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COMMON = (
    "id, request_id, received_at, {kind}, model, version, client_ip, api_key_id, params, "
    "prompt, status, http_status, queue_time_ms, ttft_ms, latency_ms, prompt_tokens, "
    "completion_tokens, error"
)


def _create(table: str, kind: str) -> None:
    op.create_table(
        table,
        # BIGINT does not autoincrement on SQLite; only INTEGER PRIMARY KEY (the rowid) does.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(kind, sa.String(32), nullable=False),
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
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
        sa.CheckConstraint(
            "status IN ('ok', 'error', 'cancelled')", name=op.f(f"ck_{table}_status")
        ),
    )
    op.create_index(op.f(f"ix_{table}_received_at"), table, ["received_at"])
    op.create_index(op.f(f"ix_{table}_model_received_at"), table, ["model", "received_at"])
    op.create_index(op.f(f"ix_{table}_status"), table, ["status"])
    op.create_index(op.f(f"ix_{table}_api_key_id"), table, ["api_key_id"])
    op.create_index(op.f(f"ix_{table}_request_id"), table, ["request_id"])


def _copy(source: str, source_kind: str, target: str, target_kind: str) -> None:
    op.execute(
        f"INSERT INTO {target} ({_COMMON.format(kind=target_kind)}) "
        f"SELECT {_COMMON.format(kind=source_kind)} FROM {source}"
    )
    op.drop_table(source)
    if op.get_bind().dialect.name == "postgresql":
        # Rows kept their ids: move the new table's sequence past them.
        op.execute(
            f"SELECT setval(pg_get_serial_sequence('{target}', 'id'), "
            f"COALESCE((SELECT MAX(id) FROM {target}), 0) + 1, false)"
        )


def upgrade() -> None:
    _create("request_records", "endpoint")
    _copy("tasks", "task_type", "request_records", "endpoint")


def downgrade() -> None:
    _create("tasks", "task_type")
    _copy("request_records", "endpoint", "tasks", "task_type")
