"""Job checkpoints: ``job_checkpoints`` (the newest training checkpoint a fine-tune on a Ray
node kept at the gateway, as a file of the job's owner; one row per job, gone with its file).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_checkpoints",
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("file_id", sa.String(32), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_checkpoints")),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["files.id"],
            name=op.f("fk_job_checkpoints_file_id_files"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("file_id", name=op.f("uq_job_checkpoints_file_id")),
        sa.CheckConstraint("step >= 0", name=op.f("ck_job_checkpoints_step_not_negative")),
    )


def downgrade() -> None:
    op.drop_table("job_checkpoints")
