"""Job deadlines: ``jobs.expires_at`` (a batch's completion window ends then) and the status
``expired`` for a job that had not finished by its deadline.

The batches already accepted get the deadline their API object showed (created + 24 h, the
only window there was). Allowing a new status changes the ``status`` CHECK constraint, which
SQLite can only do by copying the table; dropping the old ``jobs`` table would fire the
``ON DELETE CASCADE`` of ``job_events`` and ``job_items`` (foreign keys are on, and cannot be
turned off inside the migration's transaction), so on SQLite their rows are kept aside and put
back. PostgreSQL alters the constraint in place.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "'queued', 'in_progress', 'finalizing', 'cancelling', 'completed', 'failed', 'cancelled'"
_NEW = f"{_OLD}, 'expired'"
_CHILDREN = ("job_events", "job_items")
_jobs = sa.table(
    "jobs",
    sa.column("id", sa.String()),
    sa.column("kind", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("expires_at", sa.DateTime(timezone=True)),
)


@contextmanager
def _children_kept() -> Iterator[None]:
    """On SQLite, keep the rows of the tables referring to ``jobs`` while it is copied."""
    if op.get_bind().dialect.name != "sqlite":
        yield
        return
    for table in _CHILDREN:
        op.execute(f"CREATE TEMPORARY TABLE _kept_{table} AS SELECT * FROM {table}")
    yield
    for table in _CHILDREN:
        op.execute(f"DELETE FROM {table}")  # nothing should be left; never twice
        op.execute(f"INSERT INTO {table} SELECT * FROM _kept_{table}")
        op.execute(f"DROP TABLE _kept_{table}")


def _status_check(values: str, *, drop_expires_at: bool = False) -> None:
    with _children_kept(), op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_status"), f"status IN ({values})")
        if drop_expires_at:
            batch.drop_column("expires_at")


def upgrade() -> None:
    # A plain ADD COLUMN: SQLite does it in place.
    op.add_column("jobs", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    bind = op.get_bind()
    batches = bind.execute(
        sa.select(_jobs.c.id, _jobs.c.created_at).where(_jobs.c.kind == "batch")
    ).all()
    for job_id, created_at in batches:
        bind.execute(
            _jobs.update()
            .where(_jobs.c.id == job_id)
            .values(expires_at=created_at + timedelta(hours=24))
        )
    _status_check(_NEW)


def downgrade() -> None:
    # The closest older status: stopped before the end, what was done kept.
    op.execute("UPDATE jobs SET status = 'cancelled' WHERE status = 'expired'")
    _status_check(_OLD, drop_expires_at=True)
