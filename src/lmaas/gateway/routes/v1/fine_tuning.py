"""/v1/fine_tuning/jobs: OpenAI's fine-tuning API (any active key; a key sees only its own
jobs unless it is an admin key). Training runs in the job runner process; the result is a new
store model, deployed under the job's `fine_tuned_model` name."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from lmaas.gateway.deps import FineTuningManagementDep, InferenceKey
from lmaas.gateway.management.fine_tuning import MAX_LIST_LIMIT
from lmaas.protocol.fine_tuning import (
    FineTuneCreate,
    FineTuningCheckpointList,
    FineTuningEventList,
    FineTuningJob,
    FineTuningJobList,
)

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
Cursor = Annotated[str | None, Query(max_length=128)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)]


@router.post("", response_model=FineTuningJob)
async def create_job(
    body: FineTuneCreate, jobs: FineTuningManagementDep, key: InferenceKey
) -> FineTuningJob:
    """Fine-tune a store model (LoRA by default; full; or distillation, an lmaas method) on a
    file of purpose `fine-tune`."""
    return await jobs.create(key, body)


@router.get("", response_model=FineTuningJobList)
async def list_jobs(
    jobs: FineTuningManagementDep, key: InferenceKey, after: Cursor = None, limit: Limit = 20
) -> FineTuningJobList:
    return await jobs.list(key, after=after, limit=limit)


@router.get("/{job_id}", response_model=FineTuningJob)
async def retrieve_job(
    job_id: str, jobs: FineTuningManagementDep, key: InferenceKey
) -> FineTuningJob:
    return await jobs.retrieve(key, job_id)


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
async def cancel_job(
    job_id: str, jobs: FineTuningManagementDep, key: InferenceKey
) -> FineTuningJob:
    """Stops before the next step, keeping the last checkpoint; 409 once finished."""
    return await jobs.cancel(key, job_id)


@router.get("/{job_id}/events", response_model=FineTuningEventList)
async def list_events(
    job_id: str,
    jobs: FineTuningManagementDep,
    key: InferenceKey,
    after: Cursor = None,
    limit: Limit = 20,
) -> FineTuningEventList:
    """Oldest first; `metrics` events carry step, train_loss, valid_loss, learning_rate and
    tokens_per_second."""
    return await jobs.events(key, job_id, after=after, limit=limit)


@router.get("/{job_id}/checkpoints", response_model=FineTuningCheckpointList)
async def list_checkpoints(
    job_id: str,
    jobs: FineTuningManagementDep,
    key: InferenceKey,
    after: Cursor = None,
    limit: Limit = 10,
) -> FineTuningCheckpointList:
    return await jobs.checkpoints(key, job_id, after=after, limit=limit)
