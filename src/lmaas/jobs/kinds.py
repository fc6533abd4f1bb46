"""The kinds of jobs a runner knows, each with its handler (see :mod:`lmaas.jobs.context`).

A new kind adds its handler here; the dispatcher, leases, events, cancel and
the admin API (``/admin/jobs``) need no change.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lmaas.config_jobs import JobSettings
from lmaas.jobs.batch import BatchHandler
from lmaas.jobs.context import JobHandler
from lmaas.jobs.evals import EvalRunHandler
from lmaas.jobs.fine_tune import FineTuneHandler
from lmaas.jobs.gateway import GatewayClient
from lmaas.jobs.quantize import QuantizeHandler
from lmaas.jobs.storage import JobFiles
from lmaas.store.evaluations import Evaluations
from lmaas.store.files import FileStore
from lmaas.store.model_store import ModelStore

# Every kind a runner beside the gateway runs (a unit test checks it against job_handlers).
JOB_KINDS: Final = ("batch", "eval_run", "fine_tune", "quantize")


@dataclass(frozen=True, slots=True)
class LocalStore:
    """The store on the gateway's disk, which the kinds that make model versions need."""

    models: ModelStore
    files: FileStore
    home: Path


def job_handlers(
    gateway: GatewayClient,
    files: JobFiles,
    settings: JobSettings,
    evaluations: Evaluations,
    *,
    local: LocalStore | None,
    kinds: Collection[str] | None = None,
) -> dict[str, JobHandler]:
    """The handlers of ``kinds`` (None: every kind), keyed by kind; fine-tuning and
    quantizing only with the ``local`` store (a runner beside the gateway)."""
    handlers: list[JobHandler] = [
        BatchHandler(gateway, files, line_concurrency=settings.line_concurrency),
        EvalRunHandler(gateway, files, evaluations, item_concurrency=settings.line_concurrency),
    ]
    if local is not None:
        handlers += [
            FineTuneHandler(local.models, local.files, evaluations, local.home),
            QuantizeHandler(local.models, local.files, evaluations, local.home),
        ]
    return {h.kind: h for h in handlers if kinds is None or h.kind in kinds}
