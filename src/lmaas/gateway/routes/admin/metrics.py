"""/admin/metrics/history: the recent samples the gateway keeps in memory (the console's
charts; see gateway/metric_history.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from lmaas.gateway.deps import AdminKey, MetricHistoryDep

router = APIRouter(prefix="/admin/metrics", tags=["admin: metrics"])


class MetricHistoryOut(BaseModel):
    object: Literal["metrics.history"] = "metrics.history"
    interval_s: float = Field(description="Seconds between samples")
    retention_s: float = Field(description="How far back the samples go")
    samples: list[dict[str, Any]] = Field(
        description="Oldest first. Each: `t` (Unix seconds), `seconds` (since the previous "
        "sample) and `models`: per served name, `requests_per_s` by HTTP status, "
        "`prompt_tokens_per_s`, `generation_tokens_per_s`, `ttft`, `tpot`, `e2e` and `queue` "
        "(`p50`/`p90`/`p99` seconds of the requests that ended within the sample, or null), "
        "`running` and `waiting` sequences and `replicas` (count by state)"
    )


@router.get("/history", response_model=MetricHistoryOut)
async def metric_history(
    history: MetricHistoryDep,
    _: AdminKey,
    after: Annotated[
        float | None, Query(description="Only samples newer than this (Unix seconds)")
    ] = None,
    model: Annotated[str | None, Query(max_length=256)] = None,
) -> MetricHistoryOut:
    return MetricHistoryOut(
        interval_s=history.interval,
        retention_s=history.retention,
        samples=history.samples(after, model),
    )
