"""The fine-tuning handler: a job of kind ``fine_tune`` trains on a thread of the job runner
(:mod:`lmaas.jobs.fine_tune_work`) while the runner's loop keeps the lease alive.

Every step becomes a metrics event (OpenAI's ``fine_tuning.job.event`` of type ``metrics``:
step, train and validation loss, learning rate, tokens/s) and the job's progress; each
checkpoint an event too (``GET .../checkpoints``). A cancel stops before the next step with a
checkpoint of where it was; a killed runner's job is resumed by the next claim from the newest
checkpoint in ``<work dirs>/<id>/checkpoints`` (``<home>/jobs`` beside the gateway, the node
cache's ``jobs`` on a Ray node). On success the result names the new store
model (a Hugging Face version, alias ``hf``; a quantized GGUF version, alias ``gguf``), the
held-out perplexity of the base and of the result is attached to both versions, and the
gateway deploys the GGUF under the served name ``ft:<base>:<suffix>:<job>``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from lmaas.db import utc_now
from lmaas.jobs.context import JobContext, LeaseLost, Outcome
from lmaas.jobs.fine_tune_input import KIND
from lmaas.jobs.fine_tune_work import FineTuneWork, Reports
from lmaas.jobs.storage import JobFiles
from lmaas.jobs.store import CANCELLED
from lmaas.store.catalog import Catalog
from lmaas.store.evaluations import Evaluations

log = logging.getLogger(__name__)
HELD_OUT: Final = "held-out perplexity"


def _failure(exc: Exception) -> tuple[str, str] | None:
    """(code, message) of an error that means the job cannot succeed."""
    from lmaas.training.export import ExportError
    from lmaas.training.formats import TrainingDataError
    from lmaas.training.loop import TrainingDiverged
    from lmaas.training.models import IncompatibleModels

    kinds: dict[type[Exception], str] = {
        TrainingDiverged: "training_diverged",
        TrainingDataError: "invalid_training_file",
        IncompatibleModels: "incompatible_models",
        ExportError: "export_failed",
    }
    for kind, code in kinds.items():
        if isinstance(exc, kind):
            return code, str(exc)
    return None


def _evaluation(perplexity: float | None) -> dict[str, Any]:
    return {
        "result_counts": {"total": 0, "passed": 0, "failed": 0, "errored": 0},
        "per_testing_criteria_results": [
            {
                "testing_criteria": HELD_OUT,
                "passed": 0,
                "failed": 0,
                "metrics": {"perplexity": perplexity},
            }
        ],
    }


class FineTuneHandler:
    kind = KIND

    def __init__(
        self, catalog: Catalog, files: JobFiles, evaluations: Evaluations, workdirs: Path
    ) -> None:
        self.catalog = catalog
        self.files = files
        self.evaluations = evaluations
        self.workdirs = workdirs

    async def run(self, ctx: JobContext) -> Outcome:
        job = ctx.job
        workdir = self.workdirs / job.id
        workdir.mkdir(parents=True, exist_ok=True)
        reports, lost = self._reports(ctx)
        work = FineTuneWork(
            self.catalog,
            self.files,
            workdir,
            job.input | {"job_id": job.id, "owner_key_id": job.owner_key_id},
        )
        try:
            done = await asyncio.to_thread(work.run, reports)
        except Exception as exc:
            failure = _failure(exc)
            if failure is None:
                raise
            return Outcome.failed(*failure)
        if lost[0]:
            raise LeaseLost
        if done.status == "cancelled":
            return Outcome(CANCELLED, done.message)
        await ctx.call(self._attach, job.id, job.input, done.result)
        shutil.rmtree(workdir, ignore_errors=True)
        result = done.result | {
            "fine_tuned_model": job.input["fine_tuned_model"],
            "deploy_replicas": job.input.get("deploy_replicas", 1),
            "deployed": False,
        }
        held = done.result.get("held_out", {})
        return ctx.ended(
            ok_message=(
                f"{done.message}; {result['model']} versions {result['hf_version']} (hf) and "
                f"{result['gguf_version']} (gguf); held-out perplexity "
                f"{held.get('base_perplexity')} -> {held.get('perplexity')}"
            ),
            result=result,
        )

    def _reports(self, ctx: JobContext) -> tuple[Reports, list[bool]]:
        job, leases = ctx.job, ctx.leases
        started = time.monotonic()
        lost = [False]

        def event(level: str, message: str, data: dict[str, Any] | None) -> None:
            leases.event(job.id, ctx.runner, level, message, data)  # type: ignore[arg-type]

        def progress(step: int, total: int) -> None:
            elapsed = time.monotonic() - started
            eta = utc_now() + timedelta(seconds=elapsed / step * (total - step)) if step else None
            if not leases.set_progress(job.id, ctx.runner, done=step, total=total, eta_at=eta):
                lost[0] = True

        def should_stop() -> bool:
            return ctx.cancelled.is_set() or lost[0]

        return Reports(event, progress, should_stop), lost

    def _attach(self, job_id: str, given: dict[str, Any], result: dict[str, Any]) -> None:
        """The held-out perplexity of the base and of the new versions, side by side."""
        held = result.get("held_out") or {}
        if held.get("perplexity") is None:
            return
        name = f"{HELD_OUT} ({job_id})"
        base = given["base"]
        self.evaluations.attach(
            str(base["model"]),
            int(base["number"]),
            run_id=f"{job_id}:b",
            eval_id=job_id,
            eval_name=name,
            results=_evaluation(held.get("base_perplexity")),
        )
        for key in ("hf_version", "gguf_version"):
            self.evaluations.attach(
                str(result["model"]),
                int(result[key]),
                run_id=f"{job_id}:{key[0]}",
                eval_id=job_id,
                eval_name=name,
                results=_evaluation(held["perplexity"]),
            )
