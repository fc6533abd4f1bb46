"""The record of inference requests as the admin API pages through it (``/admin/requests``)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from lmaas.records.store import RecordStore


@dataclass(frozen=True)
class RecordQuery:
    """Filters of one page; ``None`` means any. ``before`` is the previous page's cursor."""

    model: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    api_key_id: str | None = None
    limit: int = 100
    before: int | None = None


class RequestRecords:
    """Queries over one :class:`RecordStore`; kept on ``app.state``."""

    def __init__(self, store: RecordStore) -> None:
        self._store = store

    async def page(self, query: RecordQuery) -> dict[str, Any]:
        """``{"object": "list", "data": [record, ...], "next_cursor": id | None}``, newest
        first; ``next_cursor`` goes back as ``before`` for the next page."""
        records, cursor = await asyncio.to_thread(
            self._store.query,
            model=query.model,
            status=query.status,
            since=query.since,
            until=query.until,
            api_key_id=query.api_key_id,
            limit=query.limit,
            before_id=query.before,
        )
        return {"object": "list", "data": [asdict(r) for r in records], "next_cursor": cursor}

    async def get(self, record_id: int) -> dict[str, Any]:
        """One record by its ``id``."""
        return asdict(await asyncio.to_thread(self._store.get, record_id))
