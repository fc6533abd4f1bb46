"""Jobs over the admin API (``/admin/jobs``): every job of every kind and key, its event log,
and cancel. What ``lmaas jobs`` shows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, Final

from lmaas.db import utc_now
from lmaas.errors import InvalidRequestError
from lmaas.jobs.metrics import JobMetrics
from lmaas.jobs.store import FINISHED, STATUSES, JobInfo, JobStore
from lmaas.jobs.supervisor import RunnerSupervisor
from lmaas.keys import KeyInfo
from lmaas.protocol.jobs import (
    JobEventList,
    JobEventObject,
    JobLease,
    JobList,
    JobObject,
    JobProgress,
)
from lmaas.store.files import Viewer

MAX_LIST_LIMIT: Final = 1000


def job_object(job: JobInfo) -> JobObject:
    now = utc_now()
    running = job.status not in FINISHED
    eta = job.progress.eta_at
    duration = None
    if job.started_at is not None:
        end = job.finished_at or now
        duration = round((end - job.started_at).total_seconds(), 3)
    return JobObject(
        id=job.id,
        kind=job.kind,
        owner_key_id=job.owner_key_id,
        status=job.status,
        priority=job.priority,
        created_at=job.created_at,
        started_at=job.started_at,
        finalizing_at=job.finalizing_at,
        finished_at=job.finished_at,
        cancel_requested_at=job.cancel_requested_at,
        expires_at=job.expires_at,
        duration_seconds=duration,
        progress=JobProgress(
            total=job.progress.total,
            done=job.progress.done,
            failed=job.progress.failed,
            eta_seconds=round(max((eta - now).total_seconds(), 0.0), 1)
            if running and eta is not None
            else None,
        ),
        attempts=job.attempts,
        lease=JobLease(
            owner=job.lease_owner,
            expires_at=job.lease_expires_at,
            heartbeat_at=job.heartbeat_at,
        ),
        input=job.input,
        result=job.result,
        error=job.error,
    )


class JobManagement:
    """The ``/admin/jobs`` operations over one :class:`JobStore`; kept on ``app.state``."""

    def __init__(self, jobs: JobStore) -> None:
        self._jobs = jobs

    async def list(
        self,
        key: KeyInfo,
        *,
        kind: str | None,
        status: str | None,
        after: str | None,
        limit: int,
    ) -> JobList:
        statuses = None
        if status is not None:
            statuses = [s.strip() for s in status.split(",") if s.strip()]
            unknown = [s for s in statuses if s not in STATUSES]
            if unknown or not statuses:
                raise InvalidRequestError(
                    f"status must be one or more of {', '.join(STATUSES)} (comma-separated)",
                    param="status",
                )
        page = await asyncio.to_thread(
            self._jobs.list, _admin(key), kind=kind, statuses=statuses, after=after, limit=limit
        )
        data = [job_object(job) for job in page.jobs]
        return JobList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=page.has_more,
        )

    async def retrieve(self, key: KeyInfo, job_id: str) -> JobObject:
        return job_object(await asyncio.to_thread(self._jobs.get, job_id, _admin(key)))

    async def events(self, key: KeyInfo, job_id: str, *, after: int, limit: int) -> JobEventList:
        page = await asyncio.to_thread(
            self._jobs.events, job_id, _admin(key), after=after, limit=limit
        )
        data = [
            JobEventObject(
                seq=e.seq,
                created_at=e.created_at,
                level=e.level,
                message=e.message,
                metrics=e.metrics,
            )
            for e in page.events
        ]
        return JobEventList(
            data=data, last_seq=data[-1].seq if data else None, has_more=page.has_more
        )

    async def cancel(self, key: KeyInfo, job_id: str) -> JobObject:
        return job_object(await asyncio.to_thread(self._jobs.cancel, job_id, _admin(key)))


def _admin(key: KeyInfo) -> Viewer:
    return Viewer(key.id, admin=True)


class JobBackground:
    """What runs beside the app for jobs: the runner process (when this gateway runs jobs)
    and the poll that keeps the job metrics current. The app's lifespan starts and stops it."""

    def __init__(self, metrics: JobMetrics, runner: RunnerSupervisor | None) -> None:
        self.metrics = metrics
        self.runner = runner
        # Other loops that follow the jobs (deploying what a fine-tuning job made).
        self.pollers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._poll: asyncio.Task[None] | None = None
        self._pollers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._poll = asyncio.create_task(self.metrics.run(), name="job-metrics")
        self._pollers = [asyncio.create_task(poll(), name="job-poller") for poll in self.pollers]
        if self.runner is not None:
            await self.runner.start()

    def draining(self) -> None:
        """The gateway stops taking requests: stop the runner now, so its lines in flight
        end at once and its jobs are let go, to resume on the next start."""
        if self.runner is not None:
            self.runner.stop_soon()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop()
        for task in [self._poll, *self._pollers]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
