"""/v1/batches: OpenAI's Batch API (any active key; a key sees only its own batches unless it
is an admin key). The lines run in the job runner process, through this gateway's own
endpoints, at the ``batch`` priority."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from lmaas.gateway.deps import BatchManagementDep, InferenceKey
from lmaas.gateway.management.batches import MAX_LIST_LIMIT
from lmaas.protocol.batches import Batch, BatchCreate, BatchList

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("", response_model=Batch)
async def create_batch(body: BatchCreate, batches: BatchManagementDep, key: InferenceKey) -> Batch:
    """Run every line of a file of purpose `batch` against `endpoint`; the answers go to
    `output_file_id`, the lines that failed to `error_file_id`."""
    return await batches.create(key, body)


@router.get("", response_model=BatchList)
async def list_batches(
    batches: BatchManagementDep,
    key: InferenceKey,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 20,
) -> BatchList:
    """Newest first; pass the last id back as `after` for the next page."""
    return await batches.list(key, after=after, limit=limit)


@router.get("/{batch_id}", response_model=Batch)
async def retrieve_batch(batch_id: str, batches: BatchManagementDep, key: InferenceKey) -> Batch:
    return await batches.retrieve(key, batch_id)


@router.post("/{batch_id}/cancel", response_model=Batch)
async def cancel_batch(batch_id: str, batches: BatchManagementDep, key: InferenceKey) -> Batch:
    """A queued batch is cancelled at once, a running one is `cancelling` until its runner
    stops (the lines answered by then are in its output file); 409 once it has finished."""
    return await batches.cancel(key, batch_id)
