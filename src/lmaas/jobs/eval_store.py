"""Evals as records (table ``evals``): what their items look like and how each is graded.

An eval belongs to the key that created it, as files and jobs do (a :class:`Viewer` sees its
own, an admin every one). Its runs are jobs of kind ``eval_run`` whose ``group_id`` is the
eval's id (:class:`lmaas.jobs.store.JobStore`). Everything here blocks (SQL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lmaas.db import as_utc, utc_now
from lmaas.errors import InvalidRequestError, NotFoundError
from lmaas.jobs.store import MAX_LIST_LIMIT, created_at_of, new_job_id, paged
from lmaas.jobs.tables import EvalRow
from lmaas.store.files import Viewer


@dataclass(frozen=True, slots=True)
class EvalInfo:
    id: str
    owner_key_id: str | None
    name: str
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    metadata: dict[str, str] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EvalPage:
    evals: list[EvalInfo]
    has_more: bool


def _info(row: EvalRow) -> EvalInfo:
    return EvalInfo(
        id=row.id,
        owner_key_id=row.owner_key_id,
        name=row.name,
        data_source_config=dict(row.data_source_config),
        testing_criteria=list(row.testing_criteria),
        metadata=row.metadata_,
        created_at=as_utc(row.created_at),
    )


def _visible(viewer: Viewer) -> list[Any]:
    if viewer.admin:
        return []
    if viewer.key_id is None:
        return [EvalRow.owner_key_id.is_(None)]
    return [EvalRow.owner_key_id == viewer.key_id]


class EvalStore:
    def __init__(
        self, session_factory: sessionmaker[Session], *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._sessions = session_factory
        self._clock = clock

    def create(
        self,
        *,
        owner_key_id: str | None,
        name: str,
        data_source_config: dict[str, Any],
        testing_criteria: list[dict[str, Any]],
        metadata: dict[str, str] | None,
    ) -> EvalInfo:
        now = self._clock()
        row = EvalRow(
            id=new_job_id("eval", now),
            owner_key_id=owner_key_id,
            name=name,
            data_source_config=data_source_config,
            testing_criteria=testing_criteria,
            metadata_=metadata,
            created_at=now,
        )
        with self._sessions.begin() as session:
            session.add(row)
            session.flush()
            return _info(row)

    def get(self, eval_id: str, viewer: Viewer) -> EvalInfo:
        with self._sessions.begin() as session:
            return _info(_find(session, eval_id, viewer))

    def list(
        self,
        viewer: Viewer,
        *,
        after: str | None = None,
        limit: int = 20,
        newest_first: bool = True,
    ) -> EvalPage:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequestError(
                f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit"
            )
        query = select(EvalRow).where(*_visible(viewer))
        query = paged(query, EvalRow, after, newest_first=newest_first, what="an eval")
        with self._sessions.begin() as session:
            rows = session.scalars(query.limit(limit + 1)).all()
            return EvalPage([_info(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def update(
        self, eval_id: str, viewer: Viewer, *, name: str | None, metadata: dict[str, str] | None
    ) -> EvalInfo:
        with self._sessions.begin() as session:
            row = _find(session, eval_id, viewer, lock=True)
            if name is not None:
                row.name = name
            if metadata is not None:
                row.metadata_ = metadata
            session.flush()
            return _info(row)

    def delete(self, eval_id: str, viewer: Viewer) -> None:
        with self._sessions.begin() as session:
            session.delete(_find(session, eval_id, viewer, lock=True))


def _find(session: Session, eval_id: str, viewer: Viewer, *, lock: bool = False) -> EvalRow:
    missing = NotFoundError(f"no eval {eval_id[:64]!r}", param="eval_id", code="eval_not_found")
    if created_at_of(eval_id) is None or not eval_id.startswith("eval_"):
        raise missing
    query = select(EvalRow).where(EvalRow.id == eval_id, *_visible(viewer))
    if lock:
        query = query.with_for_update()
    row = session.scalar(query)
    if row is None:
        raise missing
    return row
