"""Liveness, readiness and metrics."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response

from lmaas.gateway.deps import EnginesDep, MetricsDep

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """The gateway process is alive (says nothing about models)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(engines: EnginesDep) -> JSONResponse:
    """200 when every configured model has a ready replica, else 503."""
    models: dict[str, Any] = {}
    all_ready = True
    for name, engine in engines.items():
        h = engine.health()
        all_ready = all_ready and h.ready
        models[name] = {"ready": h.ready, "replicas": [asdict(r) for r in h.replicas]}
    body = {"status": "ready" if all_ready else "not_ready", "models": models}
    return JSONResponse(body, status_code=200 if all_ready else 503)


@router.get("/metrics")
async def metrics(engines: EnginesDep, m: MetricsDep) -> Response:
    for name, engine in engines.items():
        h = engine.health()
        m.running.labels(name).set(h.running)
        m.waiting.labels(name).set(max(h.waiting, engine.outstanding - h.running))
        m.replicas_ready.labels(name).set(sum(1 for r in h.replicas if r.state == "ready"))
        m.worker_restarts.labels(name).set(sum(r.restarts for r in h.replicas))
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
