"""Job records as callers see them: create, read, list, cancel, and each job's event log.

A job belongs to the API key that created it (``owner_key_id``; NULL on an open server): a
:class:`~lmaas.store.files.Viewer` sees its own jobs, an admin viewer every job, and another
key's job is answered as not found. The runner's side (claiming, leases, items, finishing) is
:class:`lmaas.jobs.leases.JobLeases`. Everything here blocks (SQL); ``clock`` (aware UTC
datetimes) is injected so tests can drive time.

Statuses: ``queued`` until a runner claims the job; ``in_progress`` while it runs;
``finalizing`` while its results are written; ``cancelling`` once a cancel reached a running
job; then one of ``completed``, ``failed``, ``cancelled``, ``expired``, which never change
again. A job may have a deadline (``expires_at``, a batch's completion window): a runner ends
one that has not finished by then as ``expired``, keeping what it did
(:meth:`lmaas.jobs.leases.JobLeases.claim` with ``due_only``).
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import ColumnElement, Select, and_, delete, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from lmaas.db import as_utc, utc_now
from lmaas.errors import ConflictError, InvalidRequestError, NotFoundError
from lmaas.jobs.tables import JobEventRow, JobItemRow, JobRow
from lmaas.store.files import Viewer
from lmaas.store.tables import FileRow

__all__ = [
    "ACTIVE",
    "FINISHED",
    "EventPage",
    "JobEvent",
    "JobInfo",
    "JobPage",
    "JobStore",
    "Level",
    "Progress",
]

Level = Literal["info", "warning", "error"]
QUEUED: Final = "queued"
IN_PROGRESS: Final = "in_progress"
FINALIZING: Final = "finalizing"
CANCELLING: Final = "cancelling"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
EXPIRED: Final = "expired"
# A runner holds a lease on a job in these statuses.
ACTIVE: Final = (IN_PROGRESS, FINALIZING, CANCELLING)
FINISHED: Final = (COMPLETED, FAILED, CANCELLED, EXPIRED)
STATUSES: Final = (QUEUED, *ACTIVE, *FINISHED)
MAX_LIST_LIMIT: Final = 1000
MAX_MESSAGE: Final = 4000
MAX_SEQ: Final = 2**31 - 1  # event numbers are an INTEGER column
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO: Final = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Progress:
    total: int
    done: int  # failed lines included
    failed: int
    eta_at: datetime | None


@dataclass(frozen=True, slots=True)
class JobInfo:
    id: str
    kind: str
    owner_key_id: str | None
    input: dict[str, Any]
    input_file_id: str | None
    status: str
    priority: int
    created_at: datetime
    started_at: datetime | None
    finalizing_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    progress: Progress
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    expires_at: datetime | None  # the deadline, if the job has one
    group_id: str | None = None  # what the job belongs to (an eval run: its eval)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[JobInfo]
    has_more: bool


@dataclass(frozen=True, slots=True)
class JobEvent:
    seq: int
    created_at: datetime
    level: str
    message: str
    metrics: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[JobEvent]
    has_more: bool


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def to_info(row: JobRow) -> JobInfo:
    return JobInfo(
        id=row.id,
        kind=row.kind,
        owner_key_id=row.owner_key_id,
        input=dict(row.input),
        input_file_id=row.input_file_id,
        status=row.status,
        priority=row.priority,
        created_at=as_utc(row.created_at),
        started_at=_utc(row.started_at),
        finalizing_at=_utc(row.finalizing_at),
        finished_at=_utc(row.finished_at),
        cancel_requested_at=_utc(row.cancel_requested_at),
        progress=Progress(
            row.progress_total, row.progress_done, row.progress_failed, _utc(row.eta_at)
        ),
        error=row.error,
        result=row.result,
        attempts=row.attempts,
        lease_owner=row.lease_owner,
        lease_expires_at=_utc(row.lease_expires_at),
        heartbeat_at=_utc(row.heartbeat_at),
        expires_at=_utc(row.expires_at),
        group_id=row.group_id,
    )


def new_job_id(prefix: str, now: datetime) -> str:
    """``<prefix>_`` + the creation time in microseconds (14 hex digits) + 10 random hex
    digits: ids of one prefix sort in creation order, and a list cursor needs no lookup."""
    micros = (now - _EPOCH) // _MICRO
    return f"{prefix}_{micros:014x}{secrets.token_hex(5)}"


def created_at_of(job_id: str) -> datetime | None:
    """The creation time a job id carries, or ``None`` when it is no job id."""
    _, sep, tail = job_id.rpartition("_")
    if not sep or len(tail) != 24 or any(c not in "0123456789abcdef" for c in tail):
        return None
    return _EPOCH + int(tail[:14], 16) * _MICRO


def paged(
    query: Select[Any], table: Any, after: str | None, *, newest_first: bool, what: str
) -> Select[Any]:
    """``query`` over rows with time-ordered ids (``created_at``, ``id``), in creation order
    (or newest first) and after the row ``after`` names (which need not exist any more)."""
    created, ident = table.created_at, table.id
    if after is not None:
        when = created_at_of(after)
        if when is None:
            raise InvalidRequestError(f"after must be the id of {what}", param="after")
        if newest_first:
            query = query.where(or_(created < when, and_(created == when, ident < after)))
        else:
            query = query.where(or_(created > when, and_(created == when, ident > after)))
    if newest_first:
        return query.order_by(created.desc(), ident.desc())
    return query.order_by(created, ident)


def append_event(
    session: Session,
    row: JobRow,
    now: datetime,
    level: Level,
    message: str,
    metrics: dict[str, Any] | None = None,
) -> None:
    """Add the next event of ``row``'s job (``row`` locked by the caller's transaction)."""
    row.last_event += 1
    session.add(
        JobEventRow(
            job_id=row.id,
            seq=row.last_event,
            created_at=now,
            level=level,
            message=message[:MAX_MESSAGE],
            metrics=metrics,
        )
    )


def visible(viewer: Viewer) -> list[ColumnElement[bool]]:
    if viewer.admin:
        return []
    if viewer.key_id is None:
        return [JobRow.owner_key_id.is_(None)]
    return [JobRow.owner_key_id == viewer.key_id]


def not_found(job_id: str, what: str = "job") -> NotFoundError:
    return NotFoundError(f"no {what} {job_id[:64]!r}", param=f"{what}_id", code=f"{what}_not_found")


class JobStore:
    """Job records over ``session_factory`` (see :mod:`lmaas.db`)."""

    def __init__(
        self, session_factory: sessionmaker[Session], *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._sessions = session_factory
        self._clock = clock

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The catalog's sessions (for the job checkpoints kept beside the jobs)."""
        return self._sessions

    # -- creating -------------------------------------------------------------------------------

    def create(
        self,
        kind: str,
        *,
        id_prefix: str,
        owner_key_id: str | None,
        input: dict[str, Any],
        input_file_id: str | None = None,
        priority: int = 0,
        total: int = 0,
        message: str = "queued",
        expires_in: timedelta | None = None,
        group_id: str | None = None,
        job_id: str | None = None,
    ) -> JobInfo:
        """A new ``queued`` job, its first event ``message``; with ``expires_in``, it
        expires if it has not finished that long after now."""
        now = self._clock()
        row = JobRow(
            id=job_id or new_job_id(id_prefix, now),
            kind=kind,
            owner_key_id=owner_key_id,
            input=input,
            input_file_id=input_file_id,
            status=QUEUED,
            priority=priority,
            created_at=now,
            progress_total=total,
            progress_done=0,
            progress_failed=0,
            attempts=0,
            last_event=0,
            expires_at=None if expires_in is None else now + expires_in,
            group_id=group_id,
        )
        with self._sessions.begin() as session:
            session.add(row)
            session.flush()  # the row before its first event (no ORM relationship orders them)
            append_event(session, row, now, "info", message)
            session.flush()
            return to_info(row)

    # -- reading --------------------------------------------------------------------------------

    def get(self, job_id: str, viewer: Viewer, *, kind: str | None = None) -> JobInfo:
        """The job, if ``viewer`` may see it (and it is of ``kind``); 404 otherwise."""
        with self._sessions.begin() as session:
            return to_info(_find(session, job_id, viewer, kind=kind))

    def list(
        self,
        viewer: Viewer,
        *,
        kind: str | None = None,
        statuses: Iterable[str] | None = None,
        after: str | None = None,
        limit: int = 20,
        group_id: str | None = None,
        newest_first: bool = True,
    ) -> JobPage:
        """Up to ``limit`` jobs ``viewer`` sees, newest first (or oldest first), starting
        after the job id ``after`` (which need not exist any more)."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequestError(
                f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit"
            )
        query = select(JobRow).where(*visible(viewer))
        if kind is not None:
            query = query.where(JobRow.kind == kind)
        if statuses is not None:
            query = query.where(JobRow.status.in_(list(statuses)))
        if group_id is not None:
            query = query.where(JobRow.group_id == group_id)
        query = paged(query, JobRow, after, newest_first=newest_first, what="a job")
        query = query.limit(limit + 1)
        with self._sessions.begin() as session:
            rows = session.scalars(query).all()
        return JobPage([to_info(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def events(self, job_id: str, viewer: Viewer, *, after: int = 0, limit: int = 100) -> EventPage:
        """The job's events numbered above ``after``, oldest first."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequestError(
                f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit"
            )
        if not 0 <= after <= MAX_SEQ:  # beyond the column, SQL fails (OverflowError): a 500
            raise InvalidRequestError(
                f"after must be an event number from 0 to {MAX_SEQ}", param="after"
            )
        with self._sessions.begin() as session:
            _find(session, job_id, viewer)
            rows = session.scalars(
                select(JobEventRow)
                .where(JobEventRow.job_id == job_id, JobEventRow.seq > after)
                .order_by(JobEventRow.seq)
                .limit(limit + 1)
            ).all()
            events = [
                JobEvent(r.seq, as_utc(r.created_at), r.level, r.message, r.metrics)
                for r in rows[:limit]
            ]
        return EventPage(events, has_more=len(rows) > limit)

    def file_in_use(self, file_id: str) -> str | None:
        """Why ``file_id`` is still needed (a job that reads it has not finished), or
        ``None``; the check :meth:`lmaas.store.files.FileStore.add_user` takes."""
        with self._sessions.begin() as session:
            row = session.execute(
                select(JobRow.kind, JobRow.id, JobRow.status)
                .where(JobRow.input_file_id == file_id, JobRow.status.not_in(FINISHED))
                .limit(1)
            ).first()
        return None if row is None else f"{row.kind} {row.id} is {row.status}"

    def reads_blob(self, digest: str, kinds: Iterable[str], runner: str) -> bool:
        """Whether a job of ``kinds`` not finished whose lease ``runner`` holds reads an input
        file whose bytes are the blob ``digest`` (``sha256:<hex>``): what a runner on another
        node may fetch."""
        with self._sessions.begin() as session:
            row = session.execute(
                select(JobRow.id)
                .join(FileRow, FileRow.id == JobRow.input_file_id)
                .where(
                    FileRow.digest == digest,
                    JobRow.kind.in_(list(kinds)),
                    JobRow.lease_owner == runner,
                    JobRow.status.not_in(FINISHED),
                )
                .limit(1)
            ).first()
        return row is not None

    def holds_owner(self, runner: str, owner: str | None) -> bool:
        """Whether ``runner`` holds (its lease) a job not finished owned by ``owner`` (None: an
        open server's job): the only keys a runner on another node may act as."""
        match = JobRow.owner_key_id.is_(None) if owner is None else JobRow.owner_key_id == owner
        with self._sessions.begin() as session:
            row = session.execute(
                select(JobRow.id)
                .where(JobRow.lease_owner == runner, JobRow.status.not_in(FINISHED), match)
                .limit(1)
            ).first()
        return row is not None

    def held_by(self, runner: str, kinds: Iterable[str]) -> builtins.list[JobInfo]:
        """The jobs of ``kinds``, not finished, whose lease ``runner`` holds."""
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(JobRow).where(
                    JobRow.lease_owner == runner,
                    JobRow.kind.in_(list(kinds)),
                    JobRow.status.not_in(FINISHED),
                )
            ).all()
            return [to_info(r) for r in rows]

    def status_counts(self) -> dict[tuple[str, str], int]:
        """How many jobs of each (kind, status) are not finished."""
        with self._sessions.begin() as session:
            rows = session.execute(
                select(JobRow.kind, JobRow.status, func.count())
                .where(JobRow.status.not_in(FINISHED))
                .group_by(JobRow.kind, JobRow.status)
            ).all()
        return {(kind, status): int(count) for kind, status, count in rows}

    def finished_since(self, since: datetime) -> builtins.list[JobInfo]:
        """Jobs that finished at or after ``since``, oldest first."""
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(JobRow).where(JobRow.finished_at >= since).order_by(JobRow.finished_at)
            ).all()
            return [to_info(r) for r in rows]

    # -- changing -------------------------------------------------------------------------------

    def cancel(self, job_id: str, viewer: Viewer, *, kind: str | None = None) -> JobInfo:
        """A queued job is cancelled at once; a running one becomes ``cancelling`` until its
        runner has stopped; one already cancelling is left as it is. 409 once finished."""
        now = self._clock()
        with self._sessions.begin() as session:
            row = _find(session, job_id, viewer, kind=kind, lock=True)
            if row.status in FINISHED:
                raise ConflictError(
                    f"{row.kind} {row.id} has already {_finished_words(row.status)}; only "
                    "a job that has not finished can be cancelled",
                    param=f"{kind or 'job'}_id",
                    code="job_finished",
                )
            if row.status == QUEUED:
                row.status = CANCELLED
                row.cancel_requested_at = now
                row.finished_at = now
                append_event(session, row, now, "info", "cancelled before it started")
            elif row.cancel_requested_at is None:
                row.status = CANCELLING
                row.cancel_requested_at = now
                append_event(session, row, now, "info", "cancel requested")
            session.flush()
            return to_info(row)

    def merge_result(self, job_id: str, fields: dict[str, Any]) -> None:
        """Add ``fields`` to a finished job's result (what the gateway did with it)."""
        with self._sessions.begin() as session:
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise not_found(job_id)
            row.result = {**(row.result or {}), **fields}

    def items(
        self, job_id: str, *, after: int | None, limit: int, newest_first: bool = False
    ) -> builtins.list[tuple[int, str]]:
        """(line, output) of the job's recorded items in line order, after line ``after``."""
        query = select(JobItemRow.line, JobItemRow.output).where(JobItemRow.job_id == job_id)
        if after is not None:
            query = query.where(
                JobItemRow.line < after if newest_first else JobItemRow.line > after
            )
        order = JobItemRow.line.desc() if newest_first else JobItemRow.line
        with self._sessions.begin() as session:
            rows = session.execute(query.order_by(order).limit(limit)).all()
        return [(int(line), str(output)) for line, output in rows]

    def delete(self, job_id: str, viewer: Viewer, *, kind: str | None = None) -> None:
        """Forget a finished job, its events and items (409 while it runs)."""
        with self._sessions.begin() as session:
            row = _find(session, job_id, viewer, kind=kind, lock=True)
            if row.status not in FINISHED:
                raise ConflictError(
                    f"{row.kind} {row.id} is {row.status}; cancel it before deleting it",
                    param=f"{kind or 'job'}_id",
                    code="job_not_finished",
                )
            session.execute(delete(JobEventRow).where(JobEventRow.job_id == job_id))
            session.execute(delete(JobItemRow).where(JobItemRow.job_id == job_id))
            session.delete(row)

    def add_event(
        self,
        job_id: str,
        level: Level,
        message: str,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        with self._sessions.begin() as session:
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise not_found(job_id)
            append_event(session, row, self._clock(), level, message, metrics)


def _finished_words(status: str) -> str:
    return {
        COMPLETED: "completed",
        FAILED: "failed",
        CANCELLED: "been cancelled",
        EXPIRED: "expired",
    }[status]


def _find(
    session: Session, job_id: str, viewer: Viewer, *, kind: str | None = None, lock: bool = False
) -> JobRow:
    what = kind or "job"
    if created_at_of(job_id) is None:
        raise not_found(job_id, what)
    query = select(JobRow).where(JobRow.id == job_id, *visible(viewer))
    if kind is not None:
        query = query.where(JobRow.kind == kind)
    if lock:
        query = query.with_for_update()
    row = session.scalar(query)
    if row is None:
        raise not_found(job_id, what)
    return row
