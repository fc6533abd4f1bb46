"""/admin/requests: the record of every inference request, filtered and paginated."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from lmaas.gateway.auth import AdminKey
from lmaas.records.store import RecordStore

router = APIRouter(prefix="/admin/requests", tags=["admin: requests"])


@router.get("")
async def list_requests(
    request: Request,
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
    store: RecordStore = request.app.state.record_store
    records, cursor = await asyncio.to_thread(
        store.query,
        model=model,
        status=status,
        since=since,
        until=until,
        api_key_id=key,
        limit=limit,
        before_id=before,
    )
    return {"object": "list", "data": [asdict(r) for r in records], "next_cursor": cursor}
