"""The kinds of jobs a runner knows, each with its handler (see :mod:`lmaas.jobs.context`).

A new kind adds its handler here; the dispatcher, leases, events, cancel and
the admin API (``/admin/jobs``) need no change.
"""

from __future__ import annotations

from pathlib import Path

from lmaas.config_jobs import JobSettings
from lmaas.jobs.batch import BatchHandler
from lmaas.jobs.context import JobHandler
from lmaas.jobs.evals import EvalRunHandler
from lmaas.jobs.fine_tune import FineTuneHandler
from lmaas.jobs.gateway import GatewayClient
from lmaas.jobs.quantize import QuantizeHandler
from lmaas.store.evaluations import Evaluations
from lmaas.store.files import FileStore
from lmaas.store.model_store import ModelStore


def job_handlers(
    gateway: GatewayClient,
    files: FileStore,
    settings: JobSettings,
    evaluations: Evaluations,
    *,
    store: ModelStore,
    home: Path,
) -> dict[str, JobHandler]:
    """Every kind's handler, keyed by kind."""
    handlers: list[JobHandler] = [
        BatchHandler(gateway, files, line_concurrency=settings.line_concurrency),
        EvalRunHandler(gateway, files, evaluations, item_concurrency=settings.line_concurrency),
        FineTuneHandler(store, files, evaluations, home),
        QuantizeHandler(store, files, evaluations, home),
    ]
    return {handler.kind: handler for handler in handlers}
