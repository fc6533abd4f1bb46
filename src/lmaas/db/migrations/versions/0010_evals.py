"""Evals: ``evals`` (an eval's item schema and testing criteria), ``jobs.group_id`` (the eval a
run belongs to) and ``version_evaluations`` (a finished run's figures, attached to the store
version it evaluated).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "evals",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("owner_key_id", sa.String(12), nullable=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("data_source_config", sa.JSON(), nullable=False),
        sa.Column("testing_criteria", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evals")),
    )
    op.create_index(op.f("ix_evals_owner_key_id"), "evals", ["owner_key_id"])
    op.add_column("jobs", sa.Column("group_id", sa.String(40), nullable=True))
    op.create_index(op.f("ix_jobs_group_id"), "jobs", ["group_id"])
    op.create_table(
        "version_evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("eval_id", sa.String(40), nullable=False),
        sa.Column("eval_name", sa.String(256), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_version_evaluations")),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_version_evaluations_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("run_id", name=op.f("uq_version_evaluations_run_id")),
    )
    op.create_index(
        op.f("ix_version_evaluations_version_id"), "version_evaluations", ["version_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_version_evaluations_version_id"), table_name="version_evaluations")
    op.drop_table("version_evaluations")
    op.drop_index(op.f("ix_jobs_group_id"), table_name="jobs")
    op.drop_column("jobs", "group_id")
    op.drop_index(op.f("ix_evals_owner_key_id"), table_name="evals")
    op.drop_table("evals")
