"""The Batch API (``/v1/batches``) over the job store: a batch is a job of kind ``batch``.

Creating a batch checks everything that can be checked before it runs (the file, its
purpose, that every line goes to the batch's endpoint, the line count) and answers 4xx in
the OpenAI envelope naming the field, with nothing written; then the job is queued and the
runner woken. A batch belongs to the key that created it, as its files do.

``completion_window`` is OpenAI's ``24h``, or as an lmaas extension any other duration (``90s``,
``30m``, ``2h``, ``7d``) up to ``jobs.max_completion_window_seconds``; a batch not finished by
``expires_at`` ends ``expired`` (see :mod:`lmaas.jobs.batch`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

from lmaas.config_jobs import JobSettings
from lmaas.errors import InvalidRequestError, NotFoundError
from lmaas.gateway.management.files import viewer_of
from lmaas.jobs.batch_lines import ENDPOINTS, scan_input
from lmaas.jobs.store import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EXPIRED,
    FAILED,
    QUEUED,
    JobInfo,
    JobStore,
)
from lmaas.keys import KeyInfo
from lmaas.protocol.batches import (
    Batch,
    BatchCreate,
    BatchError,
    BatchErrors,
    BatchList,
    BatchRequestCounts,
    BatchUsage,
)
from lmaas.store.files import FileStore, Viewer

KIND: Final = "batch"
_DAY: Final = timedelta(hours=24)
WINDOW_RE: Final = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
MAX_METADATA: Final = 16
MAX_METADATA_KEY: Final = 64
MAX_METADATA_VALUE: Final = 512
MAX_LIST_LIMIT: Final = 100


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def completion_window(text: str, max_seconds: int) -> timedelta:
    """The duration ``text`` names (``24h``, ``30m``, ...), if at most ``max_seconds``; a 400
    naming ``completion_window`` otherwise."""
    match = WINDOW_RE.fullmatch(text)
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]] if match else 0
    if not 1 <= seconds <= max_seconds:
        raise InvalidRequestError(
            f"completion_window must be a duration such as 24h (a whole number then s, m, h "
            f"or d) of at most {max_seconds} s (jobs.max_completion_window_seconds); got "
            f"{text[:16]!r}",
            param="completion_window",
            code="invalid_completion_window",
        )
    return timedelta(seconds=seconds)


def batch_object(job: JobInfo) -> Batch:
    """A batch job in OpenAI's shape (queued is ``validating``). ``request_counts.failed``
    counts the lines that ran and failed: an expired batch's lines not run are in neither
    count (but in its error file)."""
    result, progress, given = job.result or {}, job.progress, job.input
    finished = {
        COMPLETED: "completed_at",
        FAILED: "failed_at",
        CANCELLED: "cancelled_at",
        EXPIRED: "expired_at",
    }
    stamps: dict[str, int | None] = {}
    if job.status in finished:
        stamps[finished[job.status]] = _ts(job.finished_at)
    if job.status in (CANCELLING, CANCELLED):
        stamps["cancelling_at"] = _ts(job.cancel_requested_at)
    usage = result.get("usage")
    errors = None
    if job.error is not None:
        error = job.error
        errors = BatchErrors(
            data=[BatchError(code=error.get("code"), message=error.get("message"))]
        )
    window = str(given.get("completion_window", "24h"))
    expires_at = job.expires_at or job.created_at + _DAY
    return Batch(
        id=job.id,
        endpoint=str(given["endpoint"]),
        model=given.get("model"),
        errors=errors,
        input_file_id=str(given["input_file_id"]),
        completion_window=window,
        status="validating" if job.status == QUEUED else job.status,
        output_file_id=result.get("output_file_id"),
        error_file_id=result.get("error_file_id"),
        created_at=int(job.created_at.timestamp()),
        in_progress_at=_ts(job.started_at),
        expires_at=int(expires_at.timestamp()),
        finalizing_at=_ts(job.finalizing_at),
        request_counts=BatchRequestCounts(
            total=progress.total,
            completed=progress.done - progress.failed,
            failed=progress.failed,
        ),
        usage=_usage(usage) if isinstance(usage, dict) else None,
        metadata=given.get("metadata"),
        **stamps,
    )


def _usage(usage: dict[str, Any]) -> BatchUsage:
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return BatchUsage(
        input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion
    )


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if len(metadata) > MAX_METADATA:
        raise InvalidRequestError(
            f"metadata may hold at most {MAX_METADATA} pairs", param="metadata"
        )
    for key, value in metadata.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY:
            raise InvalidRequestError(
                f"metadata keys are 1 to {MAX_METADATA_KEY} characters", param="metadata"
            )
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise InvalidRequestError(
                f"metadata[{key[:64]!r}] must be a string of at most {MAX_METADATA_VALUE} "
                "characters",
                param="metadata",
            )
    return dict(metadata)


class BatchManagement:
    """The ``/v1/batches`` operations; kept on ``app.state``."""

    def __init__(
        self,
        jobs: JobStore,
        files: FileStore,
        settings: JobSettings,
        *,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._jobs = jobs
        self._files = files
        self._settings = settings
        self._on_queued = on_queued

    async def create(self, key: KeyInfo | None, body: BatchCreate) -> Batch:
        window = completion_window(
            body.completion_window, self._settings.max_completion_window_seconds
        )
        if body.endpoint not in ENDPOINTS:
            raise InvalidRequestError(
                f"endpoint must be one of {', '.join(ENDPOINTS)}",
                param="endpoint",
                code="unsupported_endpoint",
            )
        metadata = check_metadata(body.metadata)
        job = await asyncio.to_thread(self._create, viewer_of(key), body, metadata, window)
        self._on_queued()
        return batch_object(job)

    def _create(
        self,
        viewer: Viewer,
        body: BatchCreate,
        metadata: dict[str, str] | None,
        window: timedelta,
    ) -> JobInfo:
        try:
            file, handle = self._files.open(body.input_file_id, viewer)
        except NotFoundError as exc:
            raise NotFoundError(exc.message, param="input_file_id", code=exc.code) from None
        with handle:
            if file.purpose != "batch":
                raise InvalidRequestError(
                    f"file {file.id} has purpose {file.purpose!r}; a batch reads a file "
                    "uploaded with purpose 'batch'",
                    param="input_file_id",
                    code="invalid_file_purpose",
                )
            scan = scan_input(handle, body.endpoint, max_lines=self._settings.max_batch_lines)
        given = {
            "input_file_id": file.id,
            "endpoint": body.endpoint,
            "completion_window": body.completion_window,
            "metadata": metadata,
            "model": scan.model,
        }
        return self._jobs.create(
            KIND,
            id_prefix=KIND,
            owner_key_id=viewer.key_id,
            input=given,
            input_file_id=file.id,
            total=scan.lines,
            message=f"queued: {scan.lines} lines for {body.endpoint}",
            expires_in=window,
        )

    async def list(self, key: KeyInfo | None, *, after: str | None, limit: int) -> BatchList:
        page = await asyncio.to_thread(
            self._jobs.list, viewer_of(key), kind=KIND, after=after, limit=limit
        )
        data = [batch_object(job) for job in page.jobs]
        return BatchList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=page.has_more,
        )

    async def retrieve(self, key: KeyInfo | None, batch_id: str) -> Batch:
        job = await asyncio.to_thread(self._jobs.get, batch_id, viewer_of(key), kind=KIND)
        return batch_object(job)

    async def cancel(self, key: KeyInfo | None, batch_id: str) -> Batch:
        """Queued: cancelled at once; running: ``cancelling`` until the runner has stopped
        (the lines done by then are in the output). 409 once finished."""
        job = await asyncio.to_thread(self._jobs.cancel, batch_id, viewer_of(key), kind=KIND)
        return batch_object(job)
