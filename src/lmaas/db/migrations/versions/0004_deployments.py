"""Deployments: what should be served, kept across restarts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("reference", sa.String(200), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("engine_json", sa.Text(), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("replicas >= 0", name=op.f("ck_deployments_replicas_nonnegative")),
        sa.CheckConstraint("source IN ('config', 'api')", name=op.f("ck_deployments_source")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("name", name=op.f("uq_deployments_name")),
    )


def downgrade() -> None:
    op.drop_table("deployments")
