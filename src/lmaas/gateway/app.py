"""The app factory: builds the FastAPI app around a set of engines; no module-level state."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from lmaas import __version__
from lmaas.config import Settings
from lmaas.engine.client import EngineClient
from lmaas.gateway.auth import Authenticator
from lmaas.gateway.errors import install_error_handlers
from lmaas.gateway.middleware import RequestContextMiddleware
from lmaas.gateway.routes import ops
from lmaas.gateway.routes.admin import models as admin_models
from lmaas.gateway.routes.v1 import chat, completions, models
from lmaas.gateway.serving.chat import ChatServing
from lmaas.gateway.serving.completions import CompletionServing
from lmaas.registry.store import ModelStore
from lmaas.telemetry.metrics import Metrics


def create_app(
    settings: Settings,
    engines: dict[str, EngineClient],
    *,
    auth: Authenticator,
    store: ModelStore | None = None,
    served_versions: set[tuple[str, int]] | None = None,
) -> FastAPI:
    """An app serving ``engines`` (keyed by model name); the lifespan starts and stops them.

    ``auth`` decides who may call what; with a ``store`` the admin model API is mounted.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for engine in engines.values():
            await engine.start()
        try:
            yield
        finally:
            for engine in engines.values():
                await engine.close()

    app = FastAPI(
        title="lmaas",
        version=__version__,
        description="Language models as a service: an OpenAI-compatible API",
        lifespan=lifespan,
    )
    metrics = Metrics()
    app.state.settings = settings
    app.state.engines = engines
    app.state.metrics = metrics
    app.state.started_at = time.time()
    app.state.auth = auth
    app.state.store = store
    app.state.served_versions = served_versions or set()
    app.state.chat_serving = ChatServing(engines, settings.limits, metrics)
    app.state.completion_serving = CompletionServing(engines, settings.limits, metrics)
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(models.router)
    app.include_router(chat.router)
    app.include_router(completions.router)
    if store is not None:
        app.include_router(admin_models.router)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.limits.max_body_bytes,
        metrics=metrics,
        served_models=set(engines),
        access_log=settings.access_log,
    )
    return app
