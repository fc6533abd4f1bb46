"""`lmaas serve`: the gateway and its workers in this process; the only place that wires
concrete classes together."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from lmaas.config import ModelConfig, Settings, load_settings
from lmaas.errors import LmaasError
from lmaas.local_admin import remove_token, write_token

if TYPE_CHECKING:
    from fastapi import FastAPI


def _model_from_flag(value: str) -> ModelConfig:
    """A path to a GGUF file (served under its file stem), else a model of the store
    (``name``, ``name:alias``, ``name:3``) or a shipped model."""
    path = Path(value).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise typer.BadParameter(f"{path} does not exist", param_hint="--model")
        return ModelConfig(name=path.stem, path=path)
    try:
        return ModelConfig(name=value)
    except ValidationError as exc:
        raise typer.BadParameter(f"{value!r} is not a model name", param_hint="--model") from exc


# Seconds uvicorn waits past the drain before cancelling what is left (which answers 500).
_CUT_MARGIN_S = 5


def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML settings file")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: 8000]")] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Shipped model name or .gguf path (repeatable)"),
    ] = None,
    home: Annotated[Path | None, typer.Option(help="State directory [default: ~/.lmaas]")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug|info|warning|error")] = None,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain): serve HTTPS")
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option(help="PEM private key of the certificate")
    ] = None,
    shutdown_drain_seconds: Annotated[
        float | None,
        typer.Option(help="On SIGTERM, seconds running requests may take to finish [default: 30]"),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Run replicas as actors on this Ray cluster (HEAD_IP:6379, or auto)"),
    ] = None,
) -> None:
    """Serve the configured models behind the OpenAI-compatible API."""
    import uvicorn

    from lmaas.cli.server import DrainingServer
    from lmaas.telemetry.logging import setup_logging

    models = [_model_from_flag(m) for m in model] if model else None
    try:
        settings = load_settings(
            config,
            host=host,
            port=port,
            models=models,
            home=home,
            log_level=log_level,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            shutdown_drain_seconds=shutdown_drain_seconds,
            cluster={"kind": "ray", "ray_address": ray_address} if ray_address else None,
        )
    except (ValidationError, LmaasError) as exc:
        typer.echo(f"invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc
    setup_logging(settings.log_level)
    app = _build_app(settings)
    uv_config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        # The app's drain ends overrunning requests cleanly first; uvicorn's cancel backs it up.
        timeout_graceful_shutdown=int(settings.shutdown_drain_seconds) + _CUT_MARGIN_S,
    )
    runner = getattr(app.state, "job_runner", None)
    server = DrainingServer(
        uv_config, app.state.drain, on_listening=runner.listening if runner else None
    )
    try:
        server.run()
    finally:
        remove_token(settings.home_dir, app.state.local_admin_token)
    if not server.started:  # e.g. the port was taken (uvicorn has logged why)
        raise typer.Exit(3)


def _build_app(settings: Settings) -> FastAPI:
    """The app over the state under ``settings.home``; a server that must not start (no key
    on a network address, a configured model that cannot load) ends the command (exit 2)."""
    from lmaas.controller.manager import DeploymentManager
    from lmaas.gateway.app import create_app
    from lmaas.gateway.auth import Authenticator, InsecureStartupError
    from lmaas.gateway.ratelimit import KeyRateLimiter
    from lmaas.jobs.ray_runners import ray_runners
    from lmaas.jobs.supervisor import RunnerSupervisor
    from lmaas.records.store import RecordWriter
    from lmaas.state import open_state

    state = open_state(settings)
    limiter = KeyRateLimiter.from_url(settings.redis_url)
    auth = Authenticator(state.keys, bind_host=settings.host, limiter=limiter)
    try:
        auth.check_startup()
    except InsecureStartupError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(2) from exc
    manager = DeploymentManager(settings, state.store, state.deployments)
    try:
        manager.check_config()
    except (LmaasError, FileNotFoundError) as exc:
        typer.echo(f"cannot serve the configured models: {exc}", err=True)
        raise typer.Exit(2) from exc
    recorder = None
    if settings.records.enabled:
        recorder = RecordWriter(
            state.records,
            batch_size=settings.records.batch_size,
            flush_interval=settings.records.flush_interval,
            retention_days=settings.records.retention_days,
        )
    # `lmaas` commands on this machine administer the server without a key (local_admin.py).
    local_token = write_token(settings.home_dir, settings.port or None)  # 0: any free port
    auth.trust_local_admin(local_token)
    runner = None
    if settings.jobs.enabled:
        runner = RunnerSupervisor(settings, remote=ray_runners(settings, manager.cluster))
        auth.trust_runner(
            runner.token, remote=runner.remote_runner_of, holds_owner=state.jobs.holds_owner
        )
    app = create_app(
        settings,
        manager.engines,
        auth=auth,
        store=state.store,
        deployments=manager,
        recorder=recorder,
        record_store=state.records,
        file_store=state.files,
        job_store=state.jobs,
        eval_store=state.evals,
        evaluations=state.evaluations,
        job_runner=runner,
    )
    app.state.job_runner = runner
    app.state.local_admin_token = local_token
    _mount_blob_route(app, manager.cluster, runner, state)
    return app


def _mount_blob_route(app: FastAPI, cluster: object, runner: Any, state: Any) -> None:
    """A cluster whose nodes fetch model blobs from this gateway (``ray``) gets the internal
    blob route, answering its token only; job runner actors on its nodes (``runner.remote``)
    get their input blobs, output files and fine-tunes' checkpoints there, with their secrets."""
    from lmaas.gateway.routes import internal

    mount = False
    if callable(getattr(cluster, "blob_path", None)) and callable(
        getattr(cluster, "token_ok", None)
    ):
        app.state.blob_source = cluster
        mount = True
    if runner is not None and runner.remote is not None:
        from lmaas.gateway.runner_access import RunnerAccess

        app.state.runner_access = RunnerAccess(
            runner.remote_runner_of,
            runner.remote.kinds,
            state.jobs,
            state.files,
            state.store,
            checkpoints=getattr(app.state, "job_checkpoints", None),
            max_checkpoint_bytes=app.state.settings.jobs.ray.max_checkpoint_bytes,
        )
        mount = True
    if mount:
        app.include_router(internal.router)
