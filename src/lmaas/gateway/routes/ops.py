"""Liveness, readiness and metrics."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from lmaas.engine.client import EngineHealth
from lmaas.gateway.deps import DrainDep, EnginesDep, MetricsDep, MetricsKey, SeesInternals
from lmaas.gateway.engine_metrics import EngineGauges

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """The gateway process is alive (says nothing about models)."""
    return {"status": "ok"}


def deployment_state(h: EngineHealth) -> str:
    """``ready`` (a replica serves), ``scaled_to_zero`` (it wants no replica: none in its
    routing set), ``pending`` (every replica it wants waits for room in the resource pool) or
    ``not_ready`` (its replicas are starting, failed or restarting)."""
    if h.ready:
        return "ready"
    active = [r for r in h.replicas if r.state != "draining"]
    if not active:
        return "scaled_to_zero"
    if all(r.state == "pending" for r in active):
        return "pending"
    return "not_ready"


@router.get("/ready")
async def ready(engines: EnginesDep, drain: DrainDep, detail: SeesInternals) -> JSONResponse:
    """200 when every deployment that wants replicas has a ready one (a deployment scaled to
    zero does not count), else 503; 503 while the server shuts down. Each deployment shows
    its state and its replicas' states (``pending``: waiting for room in the resource pool);
    replica detail (restarts, errors such as what a pending replica waits for, nodes) only for
    an admin key, or anyone on an open server."""
    models: dict[str, Any] = {}
    all_ready = not drain.draining
    for name, engine in engines.items():
        h = engine.health()
        state = deployment_state(h)
        all_ready = all_ready and state in ("ready", "scaled_to_zero")
        replicas = (
            [asdict(r) for r in h.replicas]
            if detail
            else [{"index": r.index, "state": r.state} for r in h.replicas]
        )
        models[name] = {"state": state, "ready": h.ready, "replicas": replicas}
    status = "draining" if drain.draining else "ready" if all_ready else "not_ready"
    return JSONResponse({"status": status, "models": models}, status_code=200 if all_ready else 503)


@router.get("/metrics")
async def metrics(
    request: Request, engines: EnginesDep, m: MetricsDep, _key: MetricsKey
) -> Response:
    """Prometheus text, or OpenMetrics when the Accept header asks for it; with
    ``metrics.require_key`` only for an admin key."""
    serving = getattr(request.app.state, "chat_serving", None)
    gauges = getattr(request.app.state, "engine_gauges", None)
    if gauges is None:
        gauges = request.app.state.engine_gauges = EngineGauges(m)
    gauges.refresh(engines, serving.admission if serving is not None else None)
    body, content_type = m.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
