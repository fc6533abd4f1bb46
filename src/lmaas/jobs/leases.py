"""The dispatcher: runners claim jobs from the ``jobs`` table and hold them by a lease.

A runner claims the most urgent claimable job (highest ``priority``, then oldest): a queued
one, or one whose lease expired (its runner died) and that has attempts left. The claim is a
select of one row and an update of it in one transaction: PostgreSQL reads the row ``FOR
UPDATE SKIP LOCKED``, so runners claiming at once each get a different job without waiting;
SQLite ignores that clause, but :mod:`lmaas.db` opens every SQLite transaction with ``BEGIN
IMMEDIATE``, so claims are serialized by the database's write lock and the same code is
correct there.

A lease lasts ``lease_seconds`` and is renewed by the runner's heartbeats. Every write a
runner makes for a job (items, progress, its end) checks in the same transaction that the
runner still holds the lease, so a runner whose lease expired and whose job was claimed by
another can never write over that runner's work. A job whose lease expired once too often
(``max_attempts`` claims) is failed with an error saying so: no job stays in progress
forever. A runner that stops on purpose gives its lease back at once, and the attempt back.

A job with a deadline (``expires_at``) that passes before it finishes is claimed once more
(``due_only``, whether it waits queued or its runner died) so that a runner writes what was
done and ends it ``expired``; a runner holding it learns of the deadline from its heartbeat.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from lmaas.db import as_utc, utc_now
from lmaas.jobs.store import (
    ACTIVE,
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EXPIRED,
    FAILED,
    FINALIZING,
    IN_PROGRESS,
    QUEUED,
    JobInfo,
    Level,
    append_event,
    to_info,
)
from lmaas.jobs.tables import JobItemRow, JobRow

_ITEM_PAGE: Final = 500


@dataclass(frozen=True, slots=True)
class Heartbeat:
    held: bool  # False: the lease is gone (expired and claimed by another runner, or ended)
    cancel_requested: bool
    expired: bool = False  # the job's deadline has passed


@dataclass(frozen=True, slots=True)
class Item:
    """One finished line of a job."""

    custom_id: str
    line: int
    ok: bool
    output: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Resume:
    """What a job's earlier attempts finished: the ids of its done lines and their counts."""

    done_ids: frozenset[str]
    failed: int


class JobLeases:
    """The runner's side of the jobs table; every method blocks (SQL)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        lease_seconds: float,
        max_attempts: int,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._sessions = session_factory
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self._clock = clock

    def now(self) -> datetime:
        """The time on the dispatcher's clock (the one deadlines are read against)."""
        return self._clock()

    # -- claiming -------------------------------------------------------------------------------

    def claim(
        self, runner: str, kinds: Collection[str] | None = None, *, due_only: bool = False
    ) -> JobInfo | None:
        """Lease the most urgent claimable job to ``runner``, or ``None`` if there is none.
        With ``due_only``, only a job whose deadline has passed: it is ``finalizing`` (the
        runner writes what was done and ends it ``expired``), never started if it was
        queued."""
        now = self._clock()
        expired = and_(
            JobRow.status.in_(ACTIVE),
            JobRow.lease_expires_at <= now,
            JobRow.attempts < self.max_attempts,
        )
        query = select(JobRow).where(or_(JobRow.status == QUEUED, expired))
        if due_only:
            query = query.where(JobRow.expires_at <= now)
        if kinds is not None:
            query = query.where(JobRow.kind.in_(list(kinds)))
        query = (
            query.order_by(JobRow.priority.desc(), JobRow.created_at, JobRow.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        with self._sessions.begin() as session:
            row = session.scalar(query)
            if row is None:
                return None
            resumed, previous = row.status != QUEUED, row.lease_owner
            row.attempts += 1
            row.lease_owner = runner
            row.lease_expires_at = now + self.lease
            row.heartbeat_at = now
            attempt = f"attempt {row.attempts} of {self.max_attempts}"
            if row.cancel_requested_at is not None:
                row.status = CANCELLING
            elif due_only:
                row.status, row.finalizing_at = FINALIZING, now
            else:
                row.status = IN_PROGRESS
            if not due_only:
                row.started_at = row.started_at or now
            if due_only and row.expires_at is not None:
                level: Level = "warning"
                message = (
                    f"its deadline ({as_utc(row.expires_at):%Y-%m-%d %H:%M:%S} UTC) passed: "
                    f"runner {runner} writes what was done ({attempt})"
                )
            else:
                level, message = _claim_event(runner, attempt, resumed=resumed, previous=previous)
            append_event(session, row, now, level, message)
            session.flush()
            return to_info(row)

    def fail_exhausted(self) -> list[str]:
        """Fail the jobs whose lease expired with no attempt left; their ids."""
        now = self._clock()
        query = (
            select(JobRow)
            .where(
                JobRow.status.in_(ACTIVE),
                JobRow.lease_expires_at <= now,
                JobRow.attempts >= self.max_attempts,
            )
            .with_for_update(skip_locked=True)
        )
        failed: list[str] = []
        with self._sessions.begin() as session:
            for row in session.scalars(query).all():
                message = (
                    f"the runner working on it stopped {row.attempts} times without finishing "
                    f"(the last was {row.lease_owner}; each time its lease expired); "
                    f"{row.progress_done} of {row.progress_total} lines were done"
                )
                row.status = CANCELLED if row.cancel_requested_at is not None else FAILED
                row.finished_at = now
                row.lease_expires_at = None
                row.eta_at = None
                if row.status == FAILED:
                    row.error = {"code": "runner_lost", "message": message}
                append_event(session, row, now, "error", message)
                failed.append(row.id)
        return failed

    # -- holding --------------------------------------------------------------------------------

    def heartbeat(self, job_id: str, runner: str) -> Heartbeat:
        """Renew ``runner``'s lease; whether it still holds it and a cancel was asked."""
        now = self._clock()
        with self._sessions.begin() as session:
            row = _held(session, job_id, runner)
            if row is None:
                return Heartbeat(held=False, cancel_requested=False)
            row.lease_expires_at = now + self.lease
            row.heartbeat_at = now
            return Heartbeat(
                held=True,
                cancel_requested=row.cancel_requested_at is not None,
                expired=row.expires_at is not None and as_utc(row.expires_at) <= now,
            )

    def release(self, job_id: str, runner: str, reason: str) -> bool:
        """Give the lease back now (the runner is stopping on purpose): the job is claimable
        at once and this attempt does not count."""
        now = self._clock()
        with self._sessions.begin() as session:
            row = _held(session, job_id, runner)
            if row is None:
                return False
            row.lease_owner = None
            row.lease_expires_at = now
            row.attempts = max(0, row.attempts - 1)
            row.eta_at = None
            append_event(session, row, now, "info", f"runner {runner} let it go: {reason}")
            return True

    def release_runner(self, runner: str) -> list[str]:
        """End now the leases of ``runner``, known to be dead (its process exited): its jobs
        are claimable at once instead of after their lease expires. Their ids."""
        now = self._clock()
        released: list[str] = []
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(JobRow)
                .where(JobRow.lease_owner == runner, JobRow.status.in_(ACTIVE))
                .with_for_update()
            ).all()
            for row in rows:
                row.lease_expires_at = now
                append_event(session, row, now, "warning", f"runner {runner} exited")
                released.append(row.id)
        return released

    def event(
        self,
        job_id: str,
        runner: str,
        level: Level,
        message: str,
        metrics: dict[str, Any] | None = None,
    ) -> bool:
        """Log an event of a job ``runner`` holds."""
        with self._sessions.begin() as session:
            row = _held(session, job_id, runner)
            if row is None:
                return False
            append_event(session, row, self._clock(), level, message, metrics)
            return True

    # -- items and progress ---------------------------------------------------------------------

    def resume(self, job_id: str, runner: str, total: int) -> Resume | None:
        """Set the job's line count and its progress from the items already recorded (by
        earlier attempts); ``None`` if the lease is gone."""
        with self._sessions.begin() as session:
            row = _held(session, job_id, runner)
            if row is None:
                return None
            done = session.execute(
                select(JobItemRow.custom_id, JobItemRow.ok).where(JobItemRow.job_id == job_id)
            ).all()
            failed = sum(1 for _, ok in done if not ok)
            row.progress_total = total
            row.progress_done = len(done)
            row.progress_failed = failed
            return Resume(frozenset(custom_id for custom_id, _ in done), failed)

    def record(
        self, job_id: str, runner: str, items: Sequence[Item], *, eta_at: datetime | None
    ) -> bool:
        """Store finished lines and count them in the job's progress, if ``runner`` still
        holds the lease (else nothing is written and the answer is False). A line already
        stored (a write retried after its commit went through) is skipped."""
        with self._sessions.begin() as session:
            row = _held(session, job_id, runner)
            if row is None:
                return False
            now = self._clock()
            stored = set(
                session.scalars(
                    select(JobItemRow.custom_id).where(
                        JobItemRow.job_id == job_id,
                        JobItemRow.custom_id.in_([item.custom_id for item in items]),
                    )
                )
            )
            items = [item for item in items if item.custom_id not in stored]
            session.add_all(
                JobItemRow(
                    job_id=job_id,
                    custom_id=item.custom_id,
                    line=item.line,
                    ok=item.ok,
                    output=item.output,
                    prompt_tokens=item.prompt_tokens,
                    completion_tokens=item.completion_tokens,
                    created_at=now,
                )
                for item in items
            )
            row.progress_done += len(items)
            row.progress_failed += sum(1 for item in items if not item.ok)
            row.eta_at = eta_at
            return True

    def outputs(self, job_id: str, *, ok: bool) -> Iterator[str]:
        """The outputs of the job's successful (``ok``) or failed lines, in line order, read
        a page at a time."""
        for _, output in self.numbered_outputs(job_id, ok=ok):
            yield output

    def numbered_outputs(self, job_id: str, *, ok: bool) -> Iterator[tuple[int, str]]:
        """:meth:`outputs` with the number of each line."""
        after = 0
        while True:
            with self._sessions.begin() as session:
                rows = session.execute(
                    select(JobItemRow.line, JobItemRow.output)
                    .where(
                        JobItemRow.job_id == job_id,
                        JobItemRow.ok == ok,
                        JobItemRow.line > after,
                    )
                    .order_by(JobItemRow.line)
                    .limit(_ITEM_PAGE)
                ).all()
            for line, output in rows:
                yield line, output
                after = line
            if len(rows) < _ITEM_PAGE:
                return

    def done_keys(self, job_id: str) -> frozenset[str]:
        """The ``custom_id`` of every line of the job recorded so far."""
        with self._sessions.begin() as session:
            keys = session.scalars(
                select(JobItemRow.custom_id).where(JobItemRow.job_id == job_id)
            ).all()
        return frozenset(keys)

    def usage(self, job_id: str) -> tuple[int, int]:
        """Prompt and completion tokens of the job's lines."""
        with self._sessions.begin() as session:
            prompt, completion = session.execute(
                select(
                    func.coalesce(func.sum(JobItemRow.prompt_tokens), 0),
                    func.coalesce(func.sum(JobItemRow.completion_tokens), 0),
                ).where(JobItemRow.job_id == job_id)
            ).one()
        return int(prompt), int(completion)

    def set_progress(
        self, job_id: str, runner: str, *, done: int, total: int, eta_at: datetime | None
    ) -> bool:
        """Progress of a job that counts steps, not items (training); False if the lease is
        gone."""
        with self._sessions.begin() as session:
            row = _held(session, job_id, runner)
            if row is None:
                return False
            row.progress_total = total
            row.progress_done = min(done, total)
            row.eta_at = eta_at
            return True

    # -- ending ---------------------------------------------------------------------------------

    def begin_finalizing(self, job_id: str, runner: str) -> bool:
        """``in_progress`` -> ``finalizing`` (a cancelling job stays cancelling)."""
        now = self._clock()
        with self._sessions.begin() as session:
            row = _held(session, job_id, runner)
            if row is None:
                return False
            if row.status == IN_PROGRESS:
                row.status = FINALIZING
                row.finalizing_at = now
                row.eta_at = None
                append_event(session, row, now, "info", "writing the results")
            return True

    def finish(
        self,
        job_id: str,
        runner: str,
        status: str,
        *,
        message: str,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        drop_items: bool = False,
    ) -> bool:
        """End the job with ``status`` (completed, failed, cancelled or expired), if
        ``runner`` still holds it; ``drop_items`` deletes its items in the same transaction
        (their outputs are in the result's files by then). A job asked to cancel that
        completed or expired before its runner saw the request ends ``cancelled``: an
        accepted cancel is never contradicted."""
        now = self._clock()
        with self._sessions.begin() as session:
            row = _held(session, job_id, runner)
            if row is None:
                return False
            if status in (COMPLETED, EXPIRED) and row.cancel_requested_at is not None:
                why = "it had finished its work" if status == COMPLETED else "its deadline passed"
                status, message = CANCELLED, f"cancelled ({why}): {message}"
            row.status = status
            row.finished_at = now
            row.lease_expires_at = None
            row.eta_at = None
            row.result = result
            row.error = error
            append_event(session, row, now, "error" if status == FAILED else "info", message)
            if drop_items:
                session.execute(delete(JobItemRow).where(JobItemRow.job_id == job_id))
            return True


def _claim_event(
    runner: str, attempt: str, *, resumed: bool, previous: str | None
) -> tuple[Level, str]:
    if not resumed:
        return "info", f"started by runner {runner} ({attempt})"
    if previous is None:  # let go on purpose by a runner that stopped
        return "info", f"resumed by runner {runner} ({attempt})"
    return "warning", (
        f"resumed by runner {runner} ({attempt}): runner {previous} stopped holding it (its "
        "lease expired)"
    )


def _held(session: Session, job_id: str, runner: str) -> JobRow | None:
    """The job's row, locked, if ``runner`` holds its lease."""
    return session.scalar(
        select(JobRow)
        .where(JobRow.id == job_id, JobRow.lease_owner == runner, JobRow.status.in_(ACTIVE))
        .with_for_update()
    )
