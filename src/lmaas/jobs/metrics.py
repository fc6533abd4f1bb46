"""Job metrics for the gateway's ``/metrics``, read from the jobs table every few seconds:
the runner is another process, and the table is where every job's state already is.

Gauges count the jobs queued and running now; the finished counter and the duration
histogram take each job that ended since this gateway started, once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from lmaas.db import utc_now
from lmaas.jobs.store import ACTIVE, QUEUED, JobStore
from lmaas.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class JobMetrics:
    def __init__(self, store: JobStore, metrics: Metrics, *, since: datetime | None = None):
        self.store = store
        self.metrics = metrics
        self._since = since or utc_now()
        self._counted: set[str] = set()  # ended at ``_since`` and already counted
        self._kinds: set[str] = set()

    def poll(self) -> None:
        """Bring the metrics up to date (blocking: SQL)."""
        counts = self.store.status_counts()
        self._kinds |= {kind for kind, _ in counts}
        for kind in self._kinds:
            queued = counts.get((kind, QUEUED), 0)
            running = sum(counts.get((kind, status), 0) for status in ACTIVE)
            self.metrics.jobs_queued.labels(kind).set(queued)
            self.metrics.jobs_running.labels(kind).set(running)
        for job in self.store.finished_since(self._since):
            if job.id in self._counted or job.finished_at is None:
                continue
            self.metrics.jobs_finished.labels(job.kind, job.status).inc()
            if job.started_at is not None:
                seconds = (job.finished_at - job.started_at).total_seconds()
                self.metrics.job_duration.labels(job.kind).observe(max(seconds, 0.0))
            if job.finished_at > self._since:
                self._since, self._counted = job.finished_at, set()
            self._counted.add(job.id)

    async def run(self, interval: float = 5.0) -> None:
        while True:
            try:
                await asyncio.to_thread(self.poll)
            except Exception:
                log.exception("reading job metrics failed")
            await asyncio.sleep(interval)
