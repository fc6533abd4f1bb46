"""/admin/jobs: every job (batches, eval runs) of every key, its event log, and cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from lmaas.gateway.deps import AdminKey, JobManagementDep
from lmaas.gateway.management.jobs import MAX_LIST_LIMIT
from lmaas.protocol.jobs import JobEventList, JobList, JobObject

router = APIRouter(prefix="/admin/jobs", tags=["admin: jobs"])


@router.get("", response_model=JobList)
async def list_jobs(
    jobs: JobManagementDep,
    key: AdminKey,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    status: Annotated[str | None, Query(max_length=200, description="comma-separated")] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50,
) -> JobList:
    """Newest first; pass the last id back as `after` for the next page."""
    return await jobs.list(key, kind=kind, status=status, after=after, limit=limit)


@router.get("/{job_id}", response_model=JobObject)
async def retrieve_job(job_id: str, jobs: JobManagementDep, key: AdminKey) -> JobObject:
    return await jobs.retrieve(key, job_id)


@router.get("/{job_id}/events", response_model=JobEventList)
async def job_events(
    job_id: str,
    jobs: JobManagementDep,
    key: AdminKey,
    after: Annotated[int, Query(ge=0, description="the last seq already seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
) -> JobEventList:
    """The job's log, oldest first, from the event after `after`."""
    return await jobs.events(key, job_id, after=after, limit=limit)


@router.post("/{job_id}/cancel", response_model=JobObject)
async def cancel_job(job_id: str, jobs: JobManagementDep, key: AdminKey) -> JobObject:
    """Queued: cancelled at once; running: cancelling until its runner stops; 409 once
    finished."""
    return await jobs.cancel(key, job_id)
