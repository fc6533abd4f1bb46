"""Request records: who called what, when, and how it went — one row per inference request.

- :class:`RequestRecord` is what the gateway builds when a request ends (failed ones included).
- :class:`RecordRow` is the ``tasks`` table (created only by the Alembic migration 0003).
- :class:`RecordStore` is the synchronous database API: bulk insert, filtered newest-first pages
  with an id cursor, and retention deletes.
- :class:`RecordWriter` takes records on the request path without blocking and writes them in
  batches from a background asyncio task, keeping them through database outages.

``request_id`` is chosen by clients, so it may repeat; rows are identified by ``id``, which
increases with insertion order. Pages are ordered by ``id``, newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal, Protocol, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    delete,
    insert,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from lmaas.db import Base, as_utc, utc_now
from lmaas.errors import InvalidRequestError, NotFoundError

log = logging.getLogger(__name__)

RecordStatus = Literal["ok", "error", "cancelled"]
STATUSES: Final = ("ok", "error", "cancelled")

MAX_REQUEST_ID: Final = 128
MAX_ENDPOINT: Final = 32
MAX_MODEL: Final = 128
MAX_CLIENT_IP: Final = 64
MAX_API_KEY_ID: Final = 32
MAX_ERROR: Final = 2000
MAX_PAGE: Final = 1000
DELETE_CHUNK: Final = 10_000
_INT32: Final = 2**31 - 1
_INT64: Final = 2**63 - 1
_MAX_PARAMS_DEPTH: Final = 16

RETENTION_INTERVAL: Final = timedelta(hours=1)
MAX_RETRY_DELAY: Final = 30.0


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished (or failed, or cancelled) inference request.

    Construction checks ``status`` and that ``received_at`` carries a time zone (ValueError);
    everything else is made storable by :meth:`RecordStore.insert_many`.
    """

    request_id: str  # chosen by the client, so it may repeat
    received_at: datetime  # aware
    endpoint: str  # "chat", "completion", "embedding", ...
    model: str | None
    version: int | None
    client_ip: str | None
    api_key_id: str | None
    params: dict[str, Any]  # sampling settings
    prompt: str | None  # only when the operator enables storing prompts
    status: RecordStatus
    http_status: int
    queue_time_ms: float | None
    ttft_ms: float | None
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    error: str | None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")
        if self.received_at.tzinfo is None:
            raise ValueError("received_at must be an aware datetime")


@dataclass(frozen=True, slots=True)
class RecordOut(RequestRecord):
    """A stored record; ``id`` orders records (larger is newer) and is the page cursor."""

    id: int


class RecordRow(Base):
    __tablename__ = "request_records"
    __table_args__ = (
        CheckConstraint("status IN ('ok', 'error', 'cancelled')", name="status"),
        Index("ix_request_records_model_received_at", "model", "received_at"),
    )

    # BIGINT does not autoincrement on SQLite; only INTEGER PRIMARY KEY (the rowid) does.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    request_id: Mapped[str] = mapped_column(String(MAX_REQUEST_ID), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    endpoint: Mapped[str] = mapped_column(String(MAX_ENDPOINT))
    model: Mapped[str | None] = mapped_column(String(MAX_MODEL))
    version: Mapped[int | None] = mapped_column(Integer)
    client_ip: Mapped[str | None] = mapped_column(String(MAX_CLIENT_IP))
    api_key_id: Mapped[str | None] = mapped_column(String(MAX_API_KEY_ID), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    prompt: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    http_status: Mapped[int] = mapped_column(Integer)
    queue_time_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class RecordStore:
    """Request records over ``session_factory`` (see :mod:`lmaas.db`).

    Methods are synchronous (blocking database I/O) and thread-safe; async callers run them in a
    thread. Naive datetimes given to :meth:`query` and :meth:`delete_older_than` are taken as UTC.
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def insert_many(self, records: Sequence[RequestRecord]) -> None:
        """Insert ``records`` in one transaction.

        Any record that passed :class:`RequestRecord`'s checks is storable, so one bad record
        cannot block a batch forever: strings are cut to their column's size (``error`` to
        2000 characters), NUL and unencodable characters replaced, non-finite numbers dropped,
        out-of-range integers clamped and ``params`` coerced to plain JSON.
        """
        if not records:
            return
        rows = [_row_values(record) for record in records]
        with self._sessions.begin() as session:
            session.execute(insert(RecordRow), rows)

    def query(
        self,
        *,
        model: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        api_key_id: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> tuple[list[RecordOut], int | None]:
        """Records matching every given filter, newest first, at most ``limit`` (1..1000).

        ``since`` is inclusive and ``until`` exclusive (on ``received_at``). The second item is
        the cursor for the next page — pass it as ``before_id`` — or ``None`` after the last.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidRequestError(f"limit must be between 1 and {MAX_PAGE}", param="limit")
        if before_id is not None and not 0 <= before_id <= _INT64:
            # A cursor is a row id: none is negative or beyond a BIGINT (an OverflowError in SQL).
            raise InvalidRequestError(
                f"before must be a record id from 0 to {_INT64}", param="before"
            )
        if status is not None and status not in STATUSES:
            raise InvalidRequestError(
                f"status must be one of {', '.join(STATUSES)}", param="status"
            )
        stmt = select(RecordRow)
        if model is not None:
            stmt = stmt.where(RecordRow.model == model)
        if status is not None:
            stmt = stmt.where(RecordRow.status == status)
        if since is not None:
            stmt = stmt.where(RecordRow.received_at >= as_utc(since))
        if until is not None:
            stmt = stmt.where(RecordRow.received_at < as_utc(until))
        if api_key_id is not None:
            stmt = stmt.where(RecordRow.api_key_id == api_key_id)
        if before_id is not None:
            stmt = stmt.where(RecordRow.id < before_id)
        # One extra row tells whether another page exists without a count.
        stmt = stmt.order_by(RecordRow.id.desc()).limit(limit + 1)
        with self._sessions.begin() as session:
            rows = session.scalars(stmt).all()
            page = [_to_out(row) for row in rows[:limit]]
        cursor = page[-1].id if len(rows) > limit else None
        return page, cursor

    def get(self, record_id: int) -> RecordOut:
        """One record by its ``id`` (404 ``request_record_not_found`` when there is none)."""
        if 0 <= record_id <= _INT64:
            with self._sessions.begin() as session:
                row = session.get(RecordRow, record_id)
                if row is not None:
                    return _to_out(row)
        raise NotFoundError(
            f"request record {record_id} does not exist", code="request_record_not_found"
        )

    def delete_older_than(self, cutoff: datetime, *, chunk_size: int = DELETE_CHUNK) -> int:
        """Delete records received before ``cutoff``; returns how many.

        Deletes ``chunk_size`` rows per transaction so writers are never locked out for long.
        """
        cutoff = as_utc(cutoff)
        total = 0
        while True:
            old = select(RecordRow.id).where(RecordRow.received_at < cutoff).limit(chunk_size)
            stmt = (
                delete(RecordRow)
                .where(RecordRow.id.in_(old))
                .execution_options(synchronize_session=False)
            )
            with self._sessions.begin() as session:
                deleted = int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
            total += deleted
            if deleted < chunk_size:
                return total


def _clean(text: str) -> str:
    """``text`` as PostgreSQL accepts it: no NUL, no lone surrogates."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _text(value: str | None, limit: int | None = None) -> str | None:
    if value is None:
        return None
    return _clean(value[:limit] if limit is not None else value)


def _finite(value: float | None) -> float | None:
    # SQLite turns NaN into NULL, which a NOT NULL column refuses.
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _int32(value: int | None) -> int | None:
    return None if value is None else max(-_INT32 - 1, min(_INT32, int(value)))


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON (strict: no NaN, which PostgreSQL refuses)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _clean(value)
    if depth < _MAX_PARAMS_DEPTH:
        if isinstance(value, Mapping):
            return {_clean(str(k)): _jsonable(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [_jsonable(v, depth + 1) for v in value]
    return _clean(str(value))


def _row_values(rec: RequestRecord) -> dict[str, Any]:
    params = _jsonable(rec.params)
    return {
        "request_id": _text(rec.request_id, MAX_REQUEST_ID),
        "received_at": as_utc(rec.received_at),
        "endpoint": _text(rec.endpoint, MAX_ENDPOINT),
        "model": _text(rec.model, MAX_MODEL),
        "version": _int32(rec.version),
        "client_ip": _text(rec.client_ip, MAX_CLIENT_IP),
        "api_key_id": _text(rec.api_key_id, MAX_API_KEY_ID),
        "params": params if isinstance(params, dict) else {},
        "prompt": _text(rec.prompt),
        "status": rec.status,
        "http_status": _int32(rec.http_status),
        "queue_time_ms": _finite(rec.queue_time_ms),
        "ttft_ms": _finite(rec.ttft_ms),
        "latency_ms": _finite(rec.latency_ms) or 0.0,
        "prompt_tokens": _int32(rec.prompt_tokens),
        "completion_tokens": _int32(rec.completion_tokens),
        "error": _text(rec.error, MAX_ERROR),
    }


def _to_out(row: RecordRow) -> RecordOut:
    return RecordOut(
        id=row.id,
        request_id=row.request_id,
        received_at=as_utc(row.received_at),
        endpoint=row.endpoint,
        model=row.model,
        version=row.version,
        client_ip=row.client_ip,
        api_key_id=row.api_key_id,
        params=dict(row.params),
        prompt=row.prompt,
        status=cast(RecordStatus, row.status),  # the table's check constraint guarantees it
        http_status=row.http_status,
        queue_time_ms=row.queue_time_ms,
        ttft_ms=row.ttft_ms,
        latency_ms=row.latency_ms,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        error=row.error,
    )


class RecordSink(Protocol):
    """What :class:`RecordWriter` writes to: a :class:`RecordStore`, or a fake in tests."""

    def insert_many(self, records: Sequence[RequestRecord]) -> None: ...

    def delete_older_than(self, cutoff: datetime) -> int: ...


class RecordWriter:
    """Writes records in batches off the request path.

    :meth:`record` only appends to a bounded queue. A background task (:meth:`start`) writes
    whenever ``batch_size`` records wait or ``flush_interval`` seconds passed, each batch in one
    ``store.insert_many`` call run in a thread. A failed write is logged and retried with the
    same records, after a delay that doubles per failure up to 30 s; meanwhile new records queue
    until ``max_pending`` wait, after which they are dropped and counted in :attr:`dropped`.
    With ``retention_days`` set, records older than that are deleted at start and then hourly
    (by ``clock``, an aware-UTC wall clock that tests replace).

    Call :meth:`record` from the event loop's thread.
    """

    def __init__(
        self,
        store: RecordSink,
        *,
        batch_size: int = 200,
        flush_interval: float = 0.5,
        max_pending: int = 10_000,
        retention_days: float | None = 30.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not flush_interval > 0:
            raise ValueError("flush_interval must be positive")
        if max_pending < batch_size:
            raise ValueError("max_pending must be at least batch_size")
        if retention_days is not None and not retention_days > 0:
            raise ValueError("retention_days must be positive (or None to keep records)")
        self._store = store
        self._batch_size = batch_size
        self._interval = flush_interval
        self._max_pending = max_pending
        self._retention = timedelta(days=retention_days) if retention_days is not None else None
        self._clock = clock
        self._pending: deque[RequestRecord] = deque()
        self._batch_ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failures = 0  # consecutive failed writes
        self._next_retention: datetime | None = None
        self.dropped = 0
        self.written = 0

    @property
    def pending(self) -> int:
        """Records waiting to be written (including a batch being written now)."""
        return len(self._pending)

    def start(self) -> None:
        """Start the background writer on the running loop (a second call does nothing)."""
        if self._closed:
            raise RuntimeError("this RecordWriter is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="lmaas-task-recorder"
            )
            self._task.add_done_callback(_log_crash)

    def record(self, rec: RequestRecord) -> None:
        """Queue ``rec``; never blocks, never raises. Dropped (and counted) when closed or
        when ``max_pending`` records already wait."""
        if self._closed or len(self._pending) >= self._max_pending:
            if self.dropped == 0 or self.dropped % 1000 == 0:
                log.warning(
                    "dropping request records: %d waiting, %d dropped so far",
                    len(self._pending),
                    self.dropped,
                )
            self.dropped += 1
            return
        self._pending.append(rec)
        if len(self._pending) >= self._batch_size:
            self._batch_ready.set()

    async def flush(self) -> None:
        """Write every record queued so far. A failed write is logged, not raised; its records
        stay queued (see :attr:`pending`)."""
        await self._write_pending()

    async def close(self) -> None:
        """Stop the background writer and write what is queued. Records that still cannot be
        written are logged and counted in :attr:`dropped`."""
        self._closed = True
        self._stopping.set()
        self._batch_ready.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        await self._write_pending()
        if self._pending:
            lost = len(self._pending)
            log.error("%d request records could not be written before shutdown", lost)
            self.dropped += lost
            self._pending.clear()

    async def _run(self) -> None:
        while not self._closed:
            await self._apply_retention()
            await self._wait_for_round()
            if self._closed:
                return
            await self._write_pending()

    async def _wait_for_round(self) -> None:
        if self._failures:
            # Back off while the database is failing, even if a full batch is waiting.
            delay = min(self._interval * 2 ** min(self._failures, 16), MAX_RETRY_DELAY)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            return
        if len(self._pending) >= self._batch_size:
            return
        self._batch_ready.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._batch_ready.wait(), self._interval)

    async def _write_pending(self) -> None:
        async with self._write_lock:
            # Only what is queued now, so a steady stream cannot keep one round going forever.
            remaining = len(self._pending)
            while remaining > 0:
                batch = list(itertools.islice(self._pending, min(self._batch_size, remaining)))
                try:
                    await asyncio.to_thread(self._store.insert_many, batch)
                except Exception:
                    self._failures += 1
                    if self._failures == 1:
                        log.exception(
                            "could not write %d request records; keeping them to retry",
                            len(self._pending),
                        )
                    return
                # Only this method removes records, and only from the left: these are `batch`.
                for _ in batch:
                    self._pending.popleft()
                remaining -= len(batch)
                self.written += len(batch)
                if self._failures:
                    log.warning("request records written again after %d failures", self._failures)
                    self._failures = 0

    async def _apply_retention(self) -> None:
        if self._retention is None:
            return
        now = self._clock()
        if self._next_retention is not None and now < self._next_retention:
            return
        self._next_retention = now + RETENTION_INTERVAL
        cutoff = now - self._retention
        try:
            deleted = await asyncio.to_thread(self._store.delete_older_than, cutoff)
        except Exception:
            log.warning("could not delete old request records; next try in an hour", exc_info=True)
            return
        if deleted:
            log.info("deleted %d request records received before %s", deleted, cutoff.isoformat())


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the request recorder stopped", exc_info=task.exception())
