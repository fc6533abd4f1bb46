"""Jobs over the admin API (``/admin/jobs``), and how the job runner process talks to the
gateway it belongs to.

The runner calls the gateway's own OpenAI endpoints on loopback with the token the gateway
made at start (environment variable :data:`RUNNER_TOKEN_ENV`, never stored), naming in
:data:`JOB_OWNER_HEADER` the API key the job belongs to; the gateway then treats the request
as that key's (``gateway/auth.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel

RUNNER_TOKEN_ENV: Final = "LMAAS_JOBS_RUNNER_TOKEN"
RUNNER_CONFIG_ENV: Final = "LMAAS_JOBS_RUNNER_CONFIG"
JOB_OWNER_HEADER: Final = "X-Lmaas-Job-Owner"


class JobProgress(BaseModel):
    total: int
    done: int  # failed items included
    failed: int
    eta_seconds: float | None  # while running, from the rate of this attempt


class JobLease(BaseModel):
    owner: str | None  # the runner holding (or that last held) the job
    expires_at: datetime | None
    heartbeat_at: datetime | None


class JobObject(BaseModel):
    id: str
    object: Literal["job"] = "job"
    kind: str
    owner_key_id: str | None
    status: str
    priority: int
    created_at: datetime
    started_at: datetime | None
    finalizing_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    expires_at: datetime | None = None  # the deadline (a batch's completion window)
    duration_seconds: float | None
    progress: JobProgress
    attempts: int
    lease: JobLease
    input: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class JobEventObject(BaseModel):
    object: Literal["job.event"] = "job.event"
    seq: int
    created_at: datetime
    level: str
    message: str
    metrics: dict[str, Any] | None


class JobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventObject]
    last_seq: int | None  # pass back as `after` for the next page
    has_more: bool
