"""The app factory: builds the FastAPI app around a set of engines; no module-level state."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from lmaas import __version__
from lmaas.config import Settings
from lmaas.engine.client import EngineClient
from lmaas.engine.directory import EngineDirectory
from lmaas.gateway.auth import Authenticator
from lmaas.gateway.errors import install_error_handlers
from lmaas.gateway.management.batches import BatchManagement
from lmaas.gateway.management.eval_plans import RunPlanner
from lmaas.gateway.management.eval_runs import EvalRunManagement
from lmaas.gateway.management.evals import EvalManagement
from lmaas.gateway.management.files import FileManagement
from lmaas.gateway.management.fine_tuning import FineTuningManagement
from lmaas.gateway.management.jobs import JobBackground, JobManagement
from lmaas.gateway.management.keys import KeyManagement
from lmaas.gateway.management.models import ModelManagement
from lmaas.gateway.management.plans import PlanManagement
from lmaas.gateway.management.quantize import QuantizeManagement
from lmaas.gateway.management.requests import RequestRecords
from lmaas.gateway.middleware import RequestContextMiddleware
from lmaas.gateway.routes import compat, ops
from lmaas.gateway.routes.admin import classifiers as admin_classifiers
from lmaas.gateway.routes.admin import deployments as admin_deployments
from lmaas.gateway.routes.admin import jobs as admin_jobs
from lmaas.gateway.routes.admin import keys as admin_keys
from lmaas.gateway.routes.admin import models as admin_models
from lmaas.gateway.routes.admin import plan as admin_plan
from lmaas.gateway.routes.admin import quantize as admin_quantize
from lmaas.gateway.routes.admin import requests as admin_requests
from lmaas.gateway.routes.docs_ui import mount_docs
from lmaas.gateway.routes.v1 import (
    batches,
    chat,
    completions,
    evals,
    files,
    fine_tuning,
    models,
    understanding,
)
from lmaas.gateway.serving.admission import Admission
from lmaas.gateway.serving.chat import ChatServing
from lmaas.gateway.serving.classifiers import ClassifierTrainer
from lmaas.gateway.serving.classify import ClassifyServing
from lmaas.gateway.serving.compat import CompatServing
from lmaas.gateway.serving.completions import CompletionServing
from lmaas.gateway.serving.embeddings import EmbeddingServing
from lmaas.gateway.serving.scoring import ScoringServing
from lmaas.gateway.serving.token_tasks import TokenTaskServing
from lmaas.gateway.shutdown import Drain
from lmaas.gateway.ui.console import mount_console
from lmaas.jobs.checkpoint_store import JobCheckpoints
from lmaas.jobs.eval_store import EvalStore
from lmaas.jobs.metrics import JobMetrics
from lmaas.jobs.store import JobStore
from lmaas.jobs.supervisor import RunnerSupervisor
from lmaas.protocol.deploy import DeploymentControl
from lmaas.records.store import RecordStore, RecordWriter
from lmaas.store.evaluations import Evaluations
from lmaas.store.files import FileStore
from lmaas.store.model_store import ModelStore
from lmaas.telemetry.metrics import Metrics


def create_app(
    settings: Settings,
    engines: dict[str, EngineClient],
    *,
    auth: Authenticator,
    store: ModelStore | None = None,
    deployments: DeploymentControl | None = None,
    served_versions: set[tuple[str, int]] | None = None,
    recorder: RecordWriter | None = None,
    record_store: RecordStore | None = None,
    file_store: FileStore | None = None,
    job_store: JobStore | None = None,
    job_runner: RunnerSupervisor | None = None,
    eval_store: EvalStore | None = None,
    evaluations: Evaluations | None = None,
) -> FastAPI:
    """An app serving ``engines`` (keyed by served name).

    With ``deployments`` (a deployment manager whose live ``engines`` directory is passed as
    ``engines``) the lifespan starts and stops the manager and ``/admin/deployments`` is
    mounted; without it the lifespan starts and stops the fixed ``engines`` themselves, which
    serve the ``served_versions`` of the store. ``auth`` decides who may call what; with a
    ``store`` the admin model API is mounted, with a ``record_store`` the request records API,
    with a ``file_store`` the Files API (``/v1/files``), and with it and a ``job_store`` the
    Batch API (``/v1/batches``) and ``/admin/jobs``; a ``job_runner`` (whose token ``auth``
    trusts) is started and stopped with the app.
    """
    if not isinstance(engines, EngineDirectory):
        fixed = {model: number for model, number in (served_versions or set())}
        engines = EngineDirectory(engines, version_of=fixed.get)

    app = _new_app(_lifespan(engines, deployments, recorder))
    metrics = Metrics()
    _register_control_metrics(metrics, deployments)
    drain = Drain(settings.shutdown_drain_seconds)
    app.state.drain = drain
    app.state.settings = settings
    app.state.engines = engines
    app.state.metrics = metrics
    app.state.started_at = time.time()
    app.state.auth = auth
    app.state.deployments = deployments
    install_error_handlers(app)
    app.include_router(ops.router)
    app.state.key_management = KeyManagement(auth.keys)
    app.include_router(admin_keys.router)
    mount_console(app, settings, metrics, engines)  # /ui, / and /admin/metrics/history
    _mount_serving(app, engines, settings, metrics)
    _mount_management(
        app,
        engines,
        settings,
        store=store,
        deployments=deployments,
        served_versions=served_versions or set(),
        record_store=record_store,
        evaluations=evaluations,
    )
    if file_store is not None:
        app.state.file_management = FileManagement(file_store)
        app.include_router(files.router)
        if job_store is not None:
            _mount_jobs(app, settings, metrics, file_store, job_store, job_runner)
            if eval_store is not None:
                _mount_evals(app, settings, engines, file_store, job_store, eval_store, job_runner)
            if store is not None:
                _mount_fine_tuning(app, engines, file_store, job_store, store, job_runner)
                _mount_quantize(app, file_store, job_store, store, job_runner)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.limits.max_body_bytes,
        metrics=metrics,
        served_models=engines,
        access_log=settings.access_log,
        recorder=recorder,
        version_of=engines.version_of,
        drain=drain,
    )
    return app


def _register_control_metrics(metrics: Metrics, deployments: DeploymentControl | None) -> None:
    """The control plane's own metrics (the autoscaler's); a stand-in without them has none."""
    for collector in getattr(deployments, "collectors", list)():
        metrics.registry.register(collector)


def _new_app(lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]]) -> FastAPI:
    """The bare app: its metadata, its lifespan, and /docs and /redoc served offline."""
    app = FastAPI(
        title="lmaas",
        version=__version__,
        description="Language models as a service: an OpenAI-compatible API",
        lifespan=lifespan,
        docs_url=None,  # routes/docs_ui.py serves both with local assets
        redoc_url=None,
    )
    mount_docs(app)
    return app


def _lifespan(
    engines: EngineDirectory,
    deployments: DeploymentControl | None,
    recorder: RecordWriter | None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the deployment manager (else the fixed engines) and the record writer with the
    app; stop them in reverse when it shuts down."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if recorder is not None:
            recorder.start()
        if deployments is not None:
            await deployments.start()
        else:
            for engine in engines.values():
                await engine.start()
        jobs: JobBackground | None = getattr(app.state, "job_background", None)
        if jobs is not None:
            await jobs.start()
        app.state.metric_history.start()
        try:
            yield
        finally:
            await app.state.metric_history.stop()
            if jobs is not None:
                await jobs.stop()
            app.state.drain.close()
            await app.state.chat_serving.close()  # its chat template renderers
            if deployments is not None:
                await deployments.close()
            else:
                for engine in engines.values():
                    await engine.close()
            if recorder is not None:
                await recorder.close()

    return lifespan


def _mount_serving(
    app: FastAPI, engines: EngineDirectory, settings: Settings, metrics: Metrics
) -> None:
    """The ``/v1`` routers and their serving objects on ``app.state``."""
    store_prompts = settings.records.store_prompts
    admission = Admission(settings.limits)
    app.state.chat_serving = ChatServing(
        engines, settings.limits, metrics, store_prompts=store_prompts, admission=admission
    )
    app.state.completion_serving = CompletionServing(
        engines, settings.limits, metrics, store_prompts=store_prompts, admission=admission
    )
    for attr, cls in (
        ("embedding_serving", EmbeddingServing),
        ("classify_serving", ClassifyServing),
        ("scoring_serving", ScoringServing),
        ("token_task_serving", TokenTaskServing),
    ):
        setattr(
            app.state, attr, cls(engines, settings.limits, metrics, store_prompts=store_prompts)
        )
    app.state.compat_serving = CompatServing(
        app.state.completion_serving, app.state.token_task_serving
    )
    app.include_router(models.router)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(understanding.router)
    app.include_router(compat.router)


def _mount_jobs(
    app: FastAPI,
    settings: Settings,
    metrics: Metrics,
    file_store: FileStore,
    job_store: JobStore,
    runner: RunnerSupervisor | None,
) -> None:
    """The Batch API and ``/admin/jobs``; a file a job reads cannot be deleted meanwhile."""
    file_store.add_user(job_store.file_in_use)
    app.state.batch_management = BatchManagement(
        job_store,
        file_store,
        settings.jobs,
        on_queued=runner.wake if runner is not None else lambda: None,
    )
    app.state.job_management = JobManagement(job_store)
    background = JobBackground(JobMetrics(job_store, metrics), runner)
    app.state.job_background = background
    app.state.drain.on_begin(background.draining)
    app.include_router(batches.router)
    app.include_router(admin_jobs.router)


def _mount_fine_tuning(
    app: FastAPI,
    engines: EngineDirectory,
    file_store: FileStore,
    job_store: JobStore,
    store: ModelStore,
    runner: RunnerSupervisor | None,
) -> None:
    """The fine-tuning API; a poll beside the app deploys what succeeded, another deletes the
    checkpoints of finished jobs kept here (a job's cannot be deleted while it runs)."""
    checkpoints = JobCheckpoints(job_store.sessions, file_store)
    file_store.add_user(checkpoints.file_in_use)
    app.state.job_checkpoints = checkpoints
    app.state.job_background.pollers.append(checkpoints.run_sweeper)
    management = FineTuningManagement(
        job_store,
        file_store,
        store,
        engines,
        app.state.deployments,
        on_queued=runner.wake if runner is not None else lambda: None,
    )
    app.state.fine_tuning_management = management
    if hasattr(app.state, "eval_run_management"):
        management.evaluate_with(app.state.eval_management.store, app.state.eval_run_management)
    app.state.job_background.pollers.append(management.run_deployer)
    app.include_router(fine_tuning.router)


def _mount_quantize(
    app: FastAPI,
    file_store: FileStore,
    job_store: JobStore,
    store: ModelStore,
    runner: RunnerSupervisor | None,
) -> None:
    """Quantizing store versions (jobs of kind ``quantize``); a poll beside the app tells the
    deployments when a job moved aliases."""
    management = QuantizeManagement(
        job_store,
        file_store,
        store,
        app.state.deployments,
        on_queued=runner.wake if runner is not None else lambda: None,
    )
    app.state.quantize_management = management
    app.state.job_background.pollers.append(management.run_announcer)
    app.include_router(admin_quantize.router)


def _mount_evals(
    app: FastAPI,
    settings: Settings,
    engines: EngineDirectory,
    file_store: FileStore,
    job_store: JobStore,
    eval_store: EvalStore,
    runner: RunnerSupervisor | None,
) -> None:
    """The Evals API: evals, their runs (jobs of kind ``eval_run``) and output items."""
    app.state.eval_management = EvalManagement(eval_store, job_store)
    planner = RunPlanner(engines, app.state.deployments, file_store, settings.jobs)
    app.state.eval_run_management = EvalRunManagement(
        eval_store,
        job_store,
        planner,
        on_queued=runner.wake if runner is not None else lambda: None,
    )
    app.include_router(evals.router)


def _mount_management(
    app: FastAPI,
    engines: EngineDirectory,
    settings: Settings,
    *,
    store: ModelStore | None,
    deployments: DeploymentControl | None,
    served_versions: set[tuple[str, int]],
    record_store: RecordStore | None,
    evaluations: Evaluations | None = None,
) -> None:
    """The ``/admin`` routers whose collaborators exist, and their services on ``app.state``."""
    if store is not None:
        app.state.model_management = ModelManagement(
            store,
            deployments=deployments,
            served_versions=(
                deployments.served_versions if deployments is not None else lambda: served_versions
            ),
            evaluations=evaluations,
        )
        app.state.classifier_trainer = ClassifierTrainer(
            engines, settings.limits, store, deployments
        )
        app.state.plan_management = PlanManagement(store, deployments)
        app.include_router(admin_models.router)
        app.include_router(admin_plan.router)
        app.include_router(admin_classifiers.router)
    if record_store is not None:
        app.state.request_records = RequestRecords(record_store)
        app.include_router(admin_requests.router)
    if deployments is not None:
        app.include_router(admin_deployments.router)
