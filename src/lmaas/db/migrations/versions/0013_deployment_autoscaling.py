"""A deployment's autoscaling config: ``deployments.autoscaling_json`` (an ``autoscaling``
object with Ray Serve's names: min_replicas, max_replicas, target_ongoing_requests, delays...;
NULL for a deployment whose replicas are set by hand).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("deployments", sa.Column("autoscaling_json", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("deployments", "autoscaling_json")
