"""Files of the Files API (``/v1/files``): ``files``, one row per file, its bytes a blob.

``digest`` keeps the blob in use (``lmaas.store.refs`` counts it beside ``blob_refs`` and
``blob_leases``); ``owner_key_id`` is the API key that uploaded it (NULL: an open server).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(71), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("owner_key_id", sa.String(12), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
        sa.CheckConstraint(
            "status IN ('uploaded', 'processed', 'error')", name=op.f("ck_files_status")
        ),
        sa.CheckConstraint("bytes >= 0", name=op.f("ck_files_bytes_not_negative")),
    )
    op.create_index(op.f("ix_files_digest"), "files", ["digest"])
    op.create_index(op.f("ix_files_owner_key_id_id"), "files", ["owner_key_id", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_files_owner_key_id_id"), table_name="files")
    op.drop_index(op.f("ix_files_digest"), table_name="files")
    op.drop_table("files")
