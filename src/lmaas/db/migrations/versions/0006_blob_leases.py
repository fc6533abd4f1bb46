"""Blob leases and broken versions.

``blob_leases``: the blobs an upload in progress wrote or found, so that no other upload's
cleanup and no deletion removes them before the upload's version references them (see
``lmaas.store.refs``). ``model_versions.error``: set when start-up found a version's blobs
missing or damaged; such a version is broken and never served.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN: SQLite does it in place (no table copy, so no cascades fire).
    op.add_column("model_versions", sa.Column("error", sa.Text(), nullable=True))
    op.create_table(
        "blob_leases",
        sa.Column("upload", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(71), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("upload", "digest", name=op.f("pk_blob_leases")),
    )
    op.create_index(op.f("ix_blob_leases_digest"), "blob_leases", ["digest"])


def downgrade() -> None:
    op.drop_index(op.f("ix_blob_leases_digest"), table_name="blob_leases")
    op.drop_table("blob_leases")
    op.drop_column("model_versions", "error")
