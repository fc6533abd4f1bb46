"""A deployment's placement: ``deployments.placement_json`` (a ``placement`` object: the custom
Ray resources and the node label selector of its replicas' actors; NULL for none).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("deployments", sa.Column("placement_json", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("deployments", "placement_json")
