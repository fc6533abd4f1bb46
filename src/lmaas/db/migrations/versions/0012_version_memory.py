"""What a model version takes in memory, for the resource pool: ``model_versions.memory_bytes``
(a loaded replica's own resident memory without its KV cache, as its worker measured it; NULL
until a replica of the version has loaded) and ``model_versions.kv_bytes_per_token`` (the KV
cache's bytes per context token, from the GGUF metadata at upload or from the worker; NULL when
unknown).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs: SQLite does them in place.
    op.add_column("model_versions", sa.Column("memory_bytes", sa.BigInteger(), nullable=True))
    op.add_column("model_versions", sa.Column("kv_bytes_per_token", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("model_versions", "kv_bytes_per_token")
    op.drop_column("model_versions", "memory_bytes")
