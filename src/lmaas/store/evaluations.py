"""Evaluations attached to store versions: the figures of each finished eval run that evaluated
a version (table ``version_evaluations``), shown with the version by the admin API, so that
a base model and its fine-tuned versions can be compared side by side. They go with their
version. Everything here blocks (SQL)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lmaas.db import as_utc, utc_now
from lmaas.errors import NotFoundError
from lmaas.store.tables import ModelRow, VersionEvaluationRow, VersionRow


@dataclass(frozen=True, slots=True)
class Evaluation:
    run_id: str
    eval_id: str
    eval_name: str
    results: dict[str, Any]  # result_counts and per_testing_criteria_results of the run
    created_at: datetime


class Evaluations:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def attach(
        self,
        model: str,
        number: int,
        *,
        run_id: str,
        eval_id: str,
        eval_name: str,
        results: dict[str, Any],
    ) -> bool:
        """Attach a run's figures to version ``number`` of ``model``; False when that version
        is gone. Attaching the same run again changes nothing."""
        with self._sessions.begin() as session:
            version_id = _version_id(session, model, number)
            if version_id is None:
                return False
            done = session.scalar(
                select(VersionEvaluationRow.id).where(VersionEvaluationRow.run_id == run_id)
            )
            if done is None:
                session.add(
                    VersionEvaluationRow(
                        version_id=version_id,
                        run_id=run_id,
                        eval_id=eval_id,
                        eval_name=eval_name,
                        results=results,
                        created_at=utc_now(),
                    )
                )
            return True

    def of_version(self, model: str, number: int) -> list[Evaluation]:
        """The version's evaluations, oldest first."""
        with self._sessions.begin() as session:
            version_id = _version_id(session, model, number)
            if version_id is None:
                raise NotFoundError(f"model {model!r} has no version {number}", param="ref")
            rows = session.scalars(
                select(VersionEvaluationRow)
                .where(VersionEvaluationRow.version_id == version_id)
                .order_by(VersionEvaluationRow.id)
            ).all()
            return [
                Evaluation(r.run_id, r.eval_id, r.eval_name, r.results, as_utc(r.created_at))
                for r in rows
            ]


def _version_id(session: Session, model: str, number: int) -> int | None:
    return session.scalar(
        select(VersionRow.id)
        .join(ModelRow, ModelRow.id == VersionRow.model_id)
        .where(ModelRow.name == model, VersionRow.number == number)
    )
