"""What a job handler is given and what it answers: the seam every kind of job fills.

A handler (a batch, an eval run, ...) is one object per kind with an ``async run(ctx)`` that
returns an :class:`Outcome`. It runs in the job runner process, inside the runner's event
loop, and reaches the database only through ``ctx`` (blocking calls go to a thread). It
must stop soon after ``ctx.cancelled`` or ``ctx.expired`` (the job's deadline passed) is
set, keep its results as it goes
(:meth:`lmaas.jobs.leases.JobLeases.record`) so that a resumed run can skip what is done,
and raise :class:`LeaseLost` when a write is refused because another runner has the job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from lmaas.jobs.leases import JobLeases
from lmaas.jobs.store import CANCELLED, COMPLETED, EXPIRED, FAILED, JobInfo, Level

T = TypeVar("T")


class LeaseLost(Exception):
    """Another runner holds the job now: stop without writing anything more."""


class JobFailed(Exception):
    """The job cannot succeed (its input is unusable): it ends ``failed`` with this error."""

    def __init__(self, message: str, *, code: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.line = line

    def to_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.line is not None:
            error["line"] = self.line
        return error


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended: ``status`` is completed, failed, cancelled or expired."""

    status: str
    message: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    drop_items: bool = False

    @classmethod
    def failed(cls, code: str, message: str) -> Outcome:
        return cls(FAILED, message, error={"code": code, "message": message})


@dataclass
class JobContext:
    """One attempt at one job, as its handler sees it."""

    job: JobInfo
    runner: str
    leases: JobLeases
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    expired: asyncio.Event = field(default_factory=asyncio.Event)  # the deadline passed
    lost: bool = False

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on a thread (database and disk work)."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def event(
        self, level: Level, message: str, metrics: dict[str, Any] | None = None
    ) -> None:
        """Log an event of the job (dropped silently once the lease is gone)."""
        await self.call(self.leases.event, self.job.id, self.runner, level, message, metrics)

    def ended(self, *, ok_message: str, expired: bool = False, **fields: Any) -> Outcome:
        """``completed``; ``cancelled`` when a cancel was asked meanwhile, else ``expired``
        when the handler stopped because the deadline passed (``expired``)."""
        if self.cancelled.is_set():
            return Outcome(CANCELLED, f"cancelled; {ok_message}", **fields)
        if expired:
            return Outcome(EXPIRED, f"expired; {ok_message}", **fields)
        return Outcome(COMPLETED, f"completed; {ok_message}", **fields)


class JobHandler(Protocol):
    """Runs the jobs of one ``kind``."""

    kind: str

    async def run(self, ctx: JobContext) -> Outcome: ...
