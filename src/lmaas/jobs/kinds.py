"""The kinds of jobs a runner knows, each with its handler (see :mod:`lmaas.jobs.context`).

A new kind adds its handler here; the dispatcher, leases, events, cancel and
the admin API (``/admin/jobs``) need no change.
"""

from __future__ import annotations

from collections.abc import Collection
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
from lmaas.store.catalog import Catalog
from lmaas.store.evaluations import Evaluations

# Every kind a runner beside the gateway runs (a unit test checks it against job_handlers).
JOB_KINDS: Final = ("batch", "eval_run", "fine_tune", "quantize")


def job_handlers(
    gateway: GatewayClient,
    files: JobFiles,
    settings: JobSettings,
    evaluations: Evaluations,
    *,
    catalog: Catalog,
    workdirs: Path,
    kinds: Collection[str] | None = None,
) -> dict[str, JobHandler]:
    """The handlers of ``kinds`` (None: every kind), keyed by kind. Fine-tuning and quantizing
    keep their work (checkpoints, exported models) in ``workdirs/<job id>``."""
    handlers: list[JobHandler] = [
        BatchHandler(gateway, files, line_concurrency=settings.line_concurrency),
        EvalRunHandler(gateway, files, evaluations, item_concurrency=settings.line_concurrency),
        FineTuneHandler(catalog, files, evaluations, workdirs),
        QuantizeHandler(catalog, files, evaluations, workdirs),
    ]
    return {h.kind: h for h in handlers if kinds is None or h.kind in kinds}
