"""/admin/requests: the record of every inference request, filtered and paginated."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from lmaas.gateway.deps import AdminKey, RequestRecordsDep
from lmaas.gateway.management.requests import RecordQuery

router = APIRouter(prefix="/admin/requests", tags=["admin: requests"])


@router.get("")
async def list_requests(
    records: RequestRecordsDep,
    _: AdminKey,
    model: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    key: Annotated[str | None, Query(description="API key id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(description="cursor from the previous page")] = None,
) -> dict[str, Any]:
    """Newest first; pass `next_cursor` back as `before` for the next page."""
    query = RecordQuery(
        model=model,
        status=status,
        since=since,
        until=until,
        api_key_id=key,
        limit=limit,
        before=before,
    )
    return await records.page(query)


@router.get("/{record_id}")
async def get_request(
    records: RequestRecordsDep,
    _: AdminKey,
    record_id: Annotated[int, Path(ge=0, description="A record's `id` (not its request id)")],
) -> dict[str, Any]:
    """One request record."""
    return await records.get(record_id)
