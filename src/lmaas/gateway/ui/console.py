"""``/ui`` (the console's page and its assets), ``/`` redirecting there, and what the console
reads besides the existing APIs: the metric history ring (``/admin/metrics/history``).

Every ``/ui`` answer carries a Content-Security-Policy that allows scripts, styles, images,
fonts and requests from this origin only: the console loads nothing from anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

from fastapi import APIRouter, FastAPI
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from lmaas.config import Settings
from lmaas.engine.client import EngineClient
from lmaas.gateway.metric_history import MetricHistory
from lmaas.gateway.routes.admin import metrics as admin_metrics
from lmaas.telemetry.metrics import Metrics

STATIC_DIR: Final = Path(__file__).parent / "static"

CSP: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "worker-src 'none'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
@router.get("/ui/")
async def console_page() -> Response:
    """The console's single page (its own routes are in the URL's fragment)."""
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        return JSONResponse(
            {"error": {"message": "the console is not built: run `make ui`", "type": "ui"}},
            status_code=503,
        )
    response = FileResponse(index, media_type="text/html; charset=utf-8")
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "no-cache"
    return response


class ConsoleAssets(StaticFiles):
    """The built scripts and styles; their names carry a content hash, so they are cached for
    good, and each answer carries the console's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def mount_console(
    app: FastAPI, settings: Settings, metrics: Metrics, engines: Mapping[str, EngineClient]
) -> None:
    """The console, its assets, the redirect from ``/`` and the metric history (whose sampler
    the app's lifespan starts and stops, as ``app.state.metric_history``)."""
    app.state.metric_history = MetricHistory(
        metrics,
        engines,
        interval=settings.metrics.history_interval_s,
        retention=settings.metrics.history_seconds,
    )
    app.include_router(admin_metrics.router)
    app.include_router(router)
    app.mount(
        "/ui/assets",
        ConsoleAssets(directory=STATIC_DIR / "assets", check_dir=False),
        name="ui-assets",
    )
