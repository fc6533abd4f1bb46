"""Deployment specs in SQL: what should be served, so a restart brings it back.

A spec names a model of the store by reference (``model`` plus an alias or a version number)
or, for a file outside the store, by ``path``. ``source`` tells config-declared specs (rewritten
from the config file at every start) from those created through the API. An autoscaled spec
keeps its ``autoscaling`` object as JSON; its ``replicas`` are then those it starts with. A
spec with a ``placement`` (Ray resources and node labels of its replicas) keeps it as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Final, Literal

from sqlalchemy import CheckConstraint, DateTime, Integer, String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from lmaas.db import Base, as_utc, utc_now
from lmaas.errors import ConflictError, NotFoundError

Source = Literal["config", "api"]


class _Keep(Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP  # ``update``: leave the autoscaling (or placement) config as it is


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        CheckConstraint("replicas >= 0", name="replicas_nonnegative"),
        CheckConstraint("source IN ('config', 'api')", name="source"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    reference: Mapped[str | None] = mapped_column(String(200))
    path: Mapped[str | None] = mapped_column(Text)
    replicas: Mapped[int] = mapped_column(Integer)
    engine_json: Mapped[str] = mapped_column(Text)
    autoscaling_json: Mapped[str | None] = mapped_column(Text)
    placement_json: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    name: str
    reference: str | None  # "model", "model:alias" or "model:3" (None with a path)
    path: str | None
    replicas: int
    engine_json: str
    source: Source
    created_at: datetime | None = None
    autoscaling_json: str | None = None  # an AutoscalingConfig; None: replicas set by hand
    placement_json: str | None = None  # a PlacementConfig; None: the cluster's defaults


def _to_spec(row: DeploymentRow) -> DeploymentSpec:
    return DeploymentSpec(
        name=row.name,
        reference=row.reference,
        path=row.path,
        replicas=row.replicas,
        engine_json=row.engine_json,
        source="config" if row.source == "config" else "api",
        created_at=as_utc(row.created_at),
        autoscaling_json=row.autoscaling_json,
        placement_json=row.placement_json,
    )


class DeploymentStore:
    """CRUD on deployment specs; each call is one transaction."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def list(self) -> list[DeploymentSpec]:
        with self._sessions() as session:
            rows = session.scalars(select(DeploymentRow).order_by(DeploymentRow.name))
            return [_to_spec(r) for r in rows]

    def get(self, name: str) -> DeploymentSpec:
        with self._sessions() as session:
            row = session.scalar(select(DeploymentRow).where(DeploymentRow.name == name))
            if row is None:
                raise NotFoundError(f"no deployment {name!r}", param="name")
            return _to_spec(row)

    def create(self, spec: DeploymentSpec) -> DeploymentSpec:
        now = utc_now()
        try:
            with self._sessions.begin() as session:
                row = DeploymentRow(
                    name=spec.name,
                    reference=spec.reference,
                    path=spec.path,
                    replicas=spec.replicas,
                    engine_json=spec.engine_json,
                    autoscaling_json=spec.autoscaling_json,
                    placement_json=spec.placement_json,
                    source=spec.source,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                session.flush()
                return _to_spec(row)
        except IntegrityError as exc:
            raise ConflictError(f"deployment {spec.name!r} already exists", param="name") from exc

    def put(self, spec: DeploymentSpec) -> DeploymentSpec:
        """Create or replace (used to reconcile the config file's deployments)."""
        with self._sessions.begin() as session:
            row = session.scalar(
                select(DeploymentRow).where(DeploymentRow.name == spec.name).with_for_update()
            )
            now = utc_now()
            if row is None:
                row = DeploymentRow(name=spec.name, created_at=now)
                session.add(row)
            row.reference = spec.reference
            row.path = spec.path
            row.replicas = spec.replicas
            row.engine_json = spec.engine_json
            row.autoscaling_json = spec.autoscaling_json
            row.placement_json = spec.placement_json
            row.source = spec.source
            row.updated_at = now
            session.flush()
            return _to_spec(row)

    def update(
        self,
        name: str,
        *,
        replicas: int | None = None,
        reference: str | None = None,
        autoscaling_json: str | _Keep | None = KEEP,
        placement_json: str | _Keep | None = KEEP,
    ) -> DeploymentSpec:
        with self._sessions.begin() as session:
            row = session.scalar(
                select(DeploymentRow).where(DeploymentRow.name == name).with_for_update()
            )
            if row is None:
                raise NotFoundError(f"no deployment {name!r}", param="name")
            if replicas is not None:
                row.replicas = replicas
            if reference is not None:
                row.reference = reference
                row.path = None
            if autoscaling_json is not KEEP:
                row.autoscaling_json = autoscaling_json
            if placement_json is not KEEP:
                row.placement_json = placement_json
            row.updated_at = utc_now()
            session.flush()
            return _to_spec(row)

    def delete(self, name: str) -> None:
        with self._sessions.begin() as session:
            row = session.scalar(select(DeploymentRow).where(DeploymentRow.name == name))
            if row is None:
                raise NotFoundError(f"no deployment {name!r}", param="name")
            session.delete(row)
