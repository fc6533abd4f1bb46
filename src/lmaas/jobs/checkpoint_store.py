"""The training checkpoints fine-tunes on other nodes keep at the gateway, so that one resumed on
another node after its node died goes on from its newest checkpoint, not from step 0.

A checkpoint is one plain tar (:mod:`lmaas.jobs.checkpoint_archive`, checked as it arrives and
stored as sent) kept as a file of the job's owner (purpose :data:`PURPOSE`, held to
``jobs.ray.max_checkpoint_bytes``) with a row in ``job_checkpoints`` naming it and its step.
Each job has at most one: a new checkpoint replaces the previous one (its file is deleted once
the new row is in). The owner sees the file in ``/v1/files`` and cannot delete it while the
job has not finished (:meth:`JobCheckpoints.file_in_use`). Once the job has finished (or was
deleted) nothing resumes it, so :meth:`JobCheckpoints.sweep`, polled by the gateway, deletes
its checkpoint. Everything here blocks (SQL, disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Final

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from lmaas.db import utc_now
from lmaas.errors import NotFoundError
from lmaas.jobs.checkpoint_archive import CheckpointArchive
from lmaas.jobs.store import FINISHED, JobInfo
from lmaas.jobs.tables import JobCheckpointRow, JobRow
from lmaas.store.archive import Readable
from lmaas.store.files import FileStore, StoredFile, Viewer

log = logging.getLogger(__name__)

PURPOSE: Final = "fine-tune-checkpoint"
SWEEP_SECONDS: Final = 30.0
_EVERYONE: Final = Viewer(None, admin=True)


@dataclass(frozen=True, slots=True)
class KeptCheckpoint:
    job_id: str
    step: int
    file: StoredFile


class JobCheckpoints:
    def __init__(self, sessions: sessionmaker[Session], files: FileStore) -> None:
        self._sessions = sessions
        self._files = files

    def put(
        self,
        job: JobInfo,
        source: Readable,
        *,
        max_bytes: int,
        still_held: Callable[[], object],
    ) -> KeptCheckpoint:
        """Keep the checkpoint archive read from ``source`` as ``job``'s newest: refused
        (``InvalidRequestError``, nothing kept) unless it passes the archive's check; more than
        ``max_bytes``: ``RequestTooLargeError``. ``still_held`` (raising when the caller no
        longer holds the job) is called once the body has ended, before the row is written."""
        archive = CheckpointArchive(source)
        stored = self._files.add(
            archive.raw(),
            purpose=PURPOSE,
            filename=f"{job.id}.checkpoint.tar",
            owner_key_id=job.owner_key_id,
            max_bytes=max_bytes,
        )
        try:
            if archive.step is None:  # raw() ended without raising: never
                raise RuntimeError("the checkpoint archive was not read to its end")
            still_held()
            previous = self._record(job.id, stored.id, archive.step)
        except BaseException:
            self._drop_file(stored.id)
            raise
        if previous is not None:
            self._drop_file(previous)
        return KeptCheckpoint(job.id, archive.step, stored)

    def _record(self, job_id: str, file_id: str, step: int) -> str | None:
        """Point the job's row at ``file_id``; the file it named before, if any."""
        with self._sessions.begin() as session:
            row = session.get(JobCheckpointRow, job_id, with_for_update=True)
            if row is None:
                session.add(
                    JobCheckpointRow(
                        job_id=job_id, file_id=file_id, step=step, created_at=utc_now()
                    )
                )
                return None
            previous = row.file_id
            row.file_id, row.step, row.created_at = file_id, step, utc_now()
            return previous

    def newest(self, job_id: str) -> KeptCheckpoint | None:
        """The checkpoint ``job_id`` keeps here, if any."""
        with self._sessions.begin() as session:
            row = session.get(JobCheckpointRow, job_id)
            found = None if row is None else (row.file_id, row.step)
        if found is None:
            return None
        try:
            return KeptCheckpoint(job_id, found[1], self._files.get(found[0], _EVERYONE))
        except NotFoundError:  # deleted meanwhile (a newer one, or the job ended)
            return None

    def open(self, kept: KeptCheckpoint) -> BinaryIO:
        """The checkpoint's archive, opened for reading (close it)."""
        return self._files.open(kept.file.id, _EVERYONE)[1]

    def file_in_use(self, file_id: str) -> str | None:
        """Why ``file_id`` cannot be deleted: it is the checkpoint of a job not finished (the
        check :meth:`lmaas.store.files.FileStore.add_user` takes)."""
        with self._sessions.begin() as session:
            row = session.execute(
                select(JobRow.kind, JobRow.id, JobRow.status)
                .join(JobCheckpointRow, JobCheckpointRow.job_id == JobRow.id)
                .where(JobCheckpointRow.file_id == file_id, JobRow.status.not_in(FINISHED))
            ).first()
        return None if row is None else f"the checkpoint of {row.kind} {row.id}, {row.status}"

    def sweep(self) -> int:
        """Delete the checkpoints of jobs that finished or are gone; how many."""
        with self._sessions.begin() as session:
            rows = session.execute(
                select(JobCheckpointRow.job_id, JobCheckpointRow.file_id)
                .outerjoin(JobRow, JobRow.id == JobCheckpointRow.job_id)
                .where(or_(JobRow.id.is_(None), JobRow.status.in_(FINISHED)))
            ).all()
        swept = 0
        for job_id, file_id in rows:
            with self._sessions.begin() as session:
                result = session.execute(
                    delete(JobCheckpointRow).where(
                        JobCheckpointRow.job_id == job_id, JobCheckpointRow.file_id == file_id
                    )
                )
                gone = int(result.rowcount or 0)  # type: ignore[attr-defined]
            if gone:
                self._drop_file(file_id)
                swept += 1
        return swept

    async def run_sweeper(self, interval: float = SWEEP_SECONDS) -> None:
        while True:
            try:
                swept = await asyncio.to_thread(self.sweep)
                if swept:
                    log.info("deleted the checkpoints of %d finished jobs", swept)
            except Exception:
                log.exception("deleting the checkpoints of finished jobs failed")
            await asyncio.sleep(interval)

    def _drop_file(self, file_id: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._files.delete(file_id, _EVERYONE)
