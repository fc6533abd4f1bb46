"""The catalog's tables, created and changed only by the Alembic migrations in
``lmaas/db/migrations``. :class:`lmaas.store.catalog.Catalog`,
:class:`lmaas.store.refs.BlobRefs`, (for ``files``) :class:`lmaas.store.files.FileStore` and
(for ``version_evaluations``) :class:`lmaas.store.evaluations.Evaluations` are the only code
that reads and writes them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from lmaas.db import Base


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text)
    last_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class VersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "number"),
        CheckConstraint("number > 0", name="number_positive"),
        CheckConstraint("format IN ('gguf', 'hf')", name="format"),
        CheckConstraint("state IN ('ready', 'pending')", name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(8))
    architecture: Mapped[str | None] = mapped_column(String(128))
    parameter_count: Mapped[int | None] = mapped_column(BigInteger)
    context_length: Mapped[int | None] = mapped_column(BigInteger)
    quantization: Mapped[str | None] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(71))
    source: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16))
    # Set when the version's blobs were found missing or damaged: the version is broken.
    error: Mapped[str | None] = mapped_column(Text)
    # For the resource pool (0012): a loaded replica's own memory without its KV cache, as its
    # worker measured it, and the KV cache's bytes per context token (NULL: not known yet).
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    kv_bytes_per_token: Mapped[int | None] = mapped_column(BigInteger)
    # What `lmaas profile` measured of a replica (0014): JSON of protocol.plan.ProfileBody.
    profile_json: Mapped[str | None] = mapped_column(Text)


class AliasRow(Base):
    __tablename__ = "aliases"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BlobRefRow(Base):
    """A version uses a blob."""

    __tablename__ = "blob_refs"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(String(71), primary_key=True, index=True)


class BlobLeaseRow(Base):
    """An upload in progress wrote or found a blob; no version references it yet."""

    __tablename__ = "blob_leases"

    upload: Mapped[str] = mapped_column(String(32), primary_key=True)
    digest: Mapped[str] = mapped_column(String(71), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FileRow(Base):
    """A file of the Files API (``/v1/files``); its bytes are the blob ``digest``, which this
    row keeps in use (see :mod:`lmaas.store.refs`)."""

    __tablename__ = "files"
    __table_args__ = (
        CheckConstraint("status IN ('uploaded', 'processed', 'error')", name="status"),
        CheckConstraint("bytes >= 0", name="bytes_not_negative"),
        Index(None, "owner_key_id", "id"),
    )

    # "file-" + 14 hex digits of the creation time in microseconds + 10 random hex digits:
    # ids sort in creation order, so a list cursor (``after``) needs no lookup.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(71), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The API key that uploaded it; NULL: uploaded to an open server (no keys), one shared owner.
    owner_key_id: Mapped[str | None] = mapped_column(String(12), nullable=True)
    status: Mapped[str] = mapped_column(String(16))


class VersionEvaluationRow(Base):
    """A finished eval run's figures, attached to the store version it evaluated
    (``0010_evals``); they go with the version."""

    __tablename__ = "version_evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    run_id: Mapped[str] = mapped_column(String(40), unique=True)
    eval_id: Mapped[str] = mapped_column(String(40))
    eval_name: Mapped[str] = mapped_column(String(256))
    results: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
