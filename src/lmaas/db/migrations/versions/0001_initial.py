"""Catalog tables: models, model_versions, aliases, blob_refs.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _create_models()
    _create_model_versions()
    _create_aliases()
    _create_blob_refs()


def _create_models() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )


def _create_model_versions() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("architecture", sa.String(128), nullable=True),
        sa.Column("parameter_count", sa.BigInteger(), nullable=True),
        sa.Column("context_length", sa.BigInteger(), nullable=True),
        sa.Column("quantization", sa.String(32), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(71), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_versions_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("model_id", "number", name=op.f("uq_model_versions_model_id_number")),
        sa.CheckConstraint("number > 0", name=op.f("ck_model_versions_number_positive")),
        sa.CheckConstraint("format IN ('gguf', 'hf')", name=op.f("ck_model_versions_format")),
        sa.CheckConstraint("state IN ('ready', 'pending')", name=op.f("ck_model_versions_state")),
    )


def _create_aliases() -> None:
    op.create_table(
        "aliases",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "name", name=op.f("pk_aliases")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_aliases_model_id_models"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_aliases_version_id_model_versions"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_aliases_version_id"), "aliases", ["version_id"])


def _create_blob_refs() -> None:
    op.create_table(
        "blob_refs",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(71), nullable=False),
        sa.PrimaryKeyConstraint("version_id", "digest", name=op.f("pk_blob_refs")),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_blob_refs_version_id_model_versions"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_blob_refs_digest"), "blob_refs", ["digest"])


def downgrade() -> None:
    op.drop_index(op.f("ix_blob_refs_digest"), table_name="blob_refs")
    op.drop_table("blob_refs")
    op.drop_index(op.f("ix_aliases_version_id"), table_name="aliases")
    op.drop_table("aliases")
    op.drop_table("model_versions")
    op.drop_table("models")
