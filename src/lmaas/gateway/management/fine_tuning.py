"""The fine-tuning API (``/v1/fine_tuning/jobs``) over the job store: a fine-tuning job is a job
of kind ``fine_tune``, trained in the job runner (:mod:`lmaas.jobs.fine_tune`).

Creating one checks everything that can be checked first (:mod:`lmaas.jobs.fine_tune_input`)
and writes nothing on a 4xx. When a job succeeds, :meth:`FineTuningManagement.deploy_finished`
(polled beside the app) deploys its GGUF version under the served name
``ft:<base>:<suffix>:<job>`` and marks the job's result ``deployed``, once, even across a
gateway restart.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from typing import Any, Final

from lmaas.db import utc_now
from lmaas.engine.directory import EngineDirectory
from lmaas.errors import ConflictError, InvalidRequestError, LmaasError, NotFoundError
from lmaas.gateway.management.batches import check_metadata
from lmaas.gateway.management.eval_runs import EvalRunManagement
from lmaas.gateway.management.files import viewer_of
from lmaas.jobs import fine_tune_input as checks
from lmaas.jobs.eval_store import EvalStore
from lmaas.jobs.fine_tune_evals import GRADER, ITEM_SCHEMA
from lmaas.jobs.store import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    FAILED,
    FINALIZING,
    IN_PROGRESS,
    QUEUED,
    JobInfo,
    JobStore,
    new_job_id,
)
from lmaas.keys import KeyInfo
from lmaas.protocol.deploy import DeploymentControl, DeploymentCreate
from lmaas.protocol.evals import RunCreate
from lmaas.protocol.fine_tuning import (
    FineTuneCreate,
    FineTuningCheckpoint,
    FineTuningCheckpointList,
    FineTuningEvent,
    FineTuningEventList,
    FineTuningJob,
    FineTuningJobList,
)
from lmaas.store.catalog import VersionInfo
from lmaas.store.files import FileStore, Viewer
from lmaas.store.model_store import ModelStore

log = logging.getLogger(__name__)
MAX_LIST_LIMIT: Final = 100
STATUSES: Final = {
    QUEUED: "queued",
    IN_PROGRESS: "running",
    FINALIZING: "running",
    CANCELLING: "running",
    COMPLETED: "succeeded",
    FAILED: "failed",
    CANCELLED: "cancelled",
}
_EVENT: Final = "ftevent-"
_CHECKPOINT: Final = "ftckpt-"


def fine_tuning_object(job: JobInfo) -> FineTuningJob:
    given, result = job.input, job.result or {}
    eta = job.progress.eta_at
    hp = dict(given["hyperparameters"])
    hp.pop("learning_rate", None)
    version = None
    if "gguf_version" in result:
        version = f"{result['model']}:{result['gguf_version']}"
    return FineTuningJob(
        id=job.id,
        model=str(given["model"]),
        created_at=int(job.created_at.timestamp()),
        finished_at=int(job.finished_at.timestamp()) if job.finished_at else None,
        fine_tuned_model=given["fine_tuned_model"] if job.status == COMPLETED else None,
        status=STATUSES.get(job.status, "failed"),
        training_file=str(given["training_file"]),
        validation_file=given.get("validation_file"),
        hyperparameters=hp,
        trained_tokens=result.get("trained_tokens"),
        error=job.error,
        seed=int(given["seed"]),
        estimated_finish=int(eta.timestamp()) if eta and not job.finished else None,
        method=given["method_object"],
        metadata=given.get("metadata"),
        progress={"step": job.progress.done, "total_steps": job.progress.total},
        model_version=version,
    )


class FineTuningManagement:
    def __init__(
        self,
        jobs: JobStore,
        files: FileStore,
        store: ModelStore,
        engines: EngineDirectory,
        deployments: DeploymentControl | None,
        *,
        on_queued: Any = lambda: None,
    ) -> None:
        self._jobs = jobs
        self._files = files
        self._store = store
        self._engines = engines
        self._deployments = deployments
        self._on_queued = on_queued
        self._evals: tuple[EvalStore, EvalRunManagement] | None = None

    def evaluate_with(self, evals: EvalStore, runs: EvalRunManagement) -> None:
        """Compare base and fine-tuned on the held-out set through these evals, once deployed."""
        self._evals = (evals, runs)

    # -- creating -------------------------------------------------------------------------------

    async def create(self, key: KeyInfo | None, body: FineTuneCreate) -> FineTuningJob:
        metadata = check_metadata(body.metadata)
        suffix = checks.check_suffix(body.suffix)
        job = await asyncio.to_thread(self._create, viewer_of(key), body, suffix, metadata)
        self._on_queued()
        return fine_tuning_object(job)

    def _base(self, model: str, param: str) -> VersionInfo:
        """The store version ``model`` names: a store reference, or a served name."""
        with contextlib.suppress(LmaasError):
            return self._store.catalog.resolve(model)
        engine = self._engines.lookup(model)
        if engine is not None and self._deployments is not None:
            with contextlib.suppress(LmaasError):
                deployment = self._deployments.get(engine.name)
                if deployment.model is not None and deployment.version is not None:
                    return self._store.catalog.get_version(deployment.model, deployment.version)
        raise NotFoundError(
            f"no store model or served model {model!r} to fine-tune",
            param=param,
            code="model_not_found",
        )

    def _create(
        self, viewer: Viewer, body: FineTuneCreate, suffix: str, metadata: dict[str, str] | None
    ) -> JobInfo:
        base = self._base(body.model, "model")
        checks.trainable(base, "model")
        train = checks.check_file(self._files, viewer, body.training_file, "training_file")
        valid = None
        if body.validation_file is not None:
            valid = checks.check_file(self._files, viewer, body.validation_file, "validation_file")
        method, settings, given_hp = checks.method_of(body)
        seed = body.seed if body.seed is not None else 42
        hyperparameters = checks.resolved_hyperparameters(train.examples, method, given_hp, seed)
        if method == "distillation":
            teacher_name = settings.get("teacher") or body.model
            teacher = self._base(teacher_name, "method.distillation.teacher")
            checks.trainable(teacher, "method.distillation.teacher")
            student = None
            if settings.get("student") not in (None, "half"):
                student = self._base(str(settings["student"]), "method.distillation.student")
            checks.check_student(teacher, student)
            checks.check_tokenizers(self._store, teacher, student)
            settings["student_ref"] = (
                {"model": student.model, "number": student.number} if student else None
            )
            base = teacher
        method_object = (
            body.method.model_dump(exclude_none=True) if body.method else {"type": "supervised"}
        )
        job_id = new_job_id(checks.ID_PREFIX, utc_now())
        store_name, served_name = checks.output_names(base.model, suffix, job_id)
        given = {
            "output_model": store_name,
            "fine_tuned_model": served_name,
            "model": body.model,
            "base": {"model": base.model, "number": base.number},
            "training_file": train.id,
            "validation_file": valid.id if valid else None,
            "method": method,
            "method_settings": settings,
            "method_object": method_object,
            "hyperparameters": hyperparameters,
            "seed": seed,
            "suffix": suffix,
            "metadata": metadata,
            "quantization": body.quantization,
            "deploy_replicas": body.deploy_replicas,
            "max_seq_len": body.max_seq_len,
            "checkpoint_every_steps": body.checkpoint_every_steps,
        }
        return self._jobs.create(
            checks.KIND,
            id_prefix=checks.ID_PREFIX,
            owner_key_id=viewer.key_id,
            input=given,
            input_file_id=train.id,
            message=f"queued: {method} of {base.model}:{base.number} on {train.examples} examples",
            job_id=job_id,
        )

    # -- reading and cancelling -----------------------------------------------------------------

    async def list(
        self, key: KeyInfo | None, *, after: str | None, limit: int
    ) -> FineTuningJobList:
        page = await asyncio.to_thread(
            self._jobs.list, viewer_of(key), kind=checks.KIND, after=after, limit=limit
        )
        return FineTuningJobList(
            data=[fine_tuning_object(job) for job in page.jobs], has_more=page.has_more
        )

    async def retrieve(self, key: KeyInfo | None, job_id: str) -> FineTuningJob:
        job = await asyncio.to_thread(self._jobs.get, job_id, viewer_of(key), kind=checks.KIND)
        return fine_tuning_object(job)

    async def cancel(self, key: KeyInfo | None, job_id: str) -> FineTuningJob:
        job = await asyncio.to_thread(self._jobs.cancel, job_id, viewer_of(key), kind=checks.KIND)
        return fine_tuning_object(job)

    async def events(
        self, key: KeyInfo | None, job_id: str, *, after: str | None, limit: int
    ) -> FineTuningEventList:
        viewer = viewer_of(key)
        seq = _seq(after, _EVENT, job_id) if after is not None else 0

        def read() -> Any:
            self._jobs.get(job_id, viewer, kind=checks.KIND)
            return self._jobs.events(job_id, viewer, after=seq, limit=limit)

        page = await asyncio.to_thread(read)
        data = []
        for event in page.events:
            metrics = event.metrics or {}
            data.append(
                FineTuningEvent(
                    id=f"{_EVENT}{job_id}-{event.seq}",
                    created_at=int(event.created_at.timestamp()),
                    level="warn" if event.level == "warning" else event.level,
                    message=event.message,
                    data=metrics or None,
                    type="metrics"
                    if "step" in metrics and "checkpoint" not in metrics
                    else "message",
                )
            )
        return FineTuningEventList(data=data, has_more=page.has_more)

    async def checkpoints(
        self, key: KeyInfo | None, job_id: str, *, after: str | None, limit: int
    ) -> FineTuningCheckpointList:
        viewer = viewer_of(key)
        since = _seq(after, _CHECKPOINT, job_id) if after is not None else None
        found = await asyncio.to_thread(self._checkpoints, viewer, job_id)
        found.sort(key=lambda c: -c.step_number)  # newest first, as OpenAI lists them
        if since is not None:
            found = [c for c in found if c.step_number < since]
        page = found[:limit]
        return FineTuningCheckpointList(
            data=page,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=len(found) > limit,
        )

    def _checkpoints(self, viewer: Viewer, job_id: str) -> builtins.list[FineTuningCheckpoint]:
        job = self._jobs.get(job_id, viewer, kind=checks.KIND)
        served = str(job.input["fine_tuned_model"])
        found: dict[int, FineTuningCheckpoint] = {}
        after = 0
        while True:
            page = self._jobs.events(job_id, viewer, after=after, limit=1000)
            for event in page.events:
                metrics = event.metrics or {}
                if metrics.get("checkpoint"):
                    step = int(metrics["step"])
                    found[step] = FineTuningCheckpoint(
                        id=f"{_CHECKPOINT}{job_id}-{step}",
                        created_at=int(event.created_at.timestamp()),
                        fine_tuned_model_checkpoint=f"{served}:ckpt-step-{step}",
                        fine_tuning_job_id=job_id,
                        metrics={
                            k: float(v)
                            for k, v in metrics.items()
                            if isinstance(v, int | float) and k != "checkpoint"
                        },
                        step_number=step,
                    )
                after = event.seq
            if not page.has_more:
                return list(found.values())

    # -- deploying what succeeded ---------------------------------------------------------------

    async def deploy_finished(self) -> None:
        """Deploy every succeeded job's model not deployed yet (polled beside the app)."""
        if self._deployments is None:
            return
        page = await asyncio.to_thread(
            self._jobs.list,
            Viewer(None, admin=True),
            kind=checks.KIND,
            statuses=[COMPLETED],
            limit=50,
        )
        for job in page.jobs:
            result = job.result or {}
            if result.get("deployed") is not False:
                continue
            replicas = int(result.get("deploy_replicas", 1))
            note: dict[str, Any] = {"deployed": True}
            if replicas > 0:
                body = DeploymentCreate(
                    model=f"{result['model']}:{result['gguf_version']}",
                    name=str(result["fine_tuned_model"]),
                    replicas=replicas,
                )
                try:
                    await self._deployments.create(body)
                except ConflictError:
                    pass  # deployed before this gateway restarted
                except LmaasError as exc:
                    log.warning("deploying %s failed: %s", body.name, exc)
                    note["deploy_error"] = str(exc)
                if "deploy_error" not in note and result.get("eval_file_id"):
                    note["held_out_runs"] = await asyncio.to_thread(self._held_out_runs, job)
            await asyncio.to_thread(self._jobs.merge_result, job.id, note)
            await asyncio.to_thread(
                self._jobs.add_event, job.id, "info", f"deployed as {result['fine_tuned_model']}"
            )

    def _held_out_runs(self, job: JobInfo) -> builtins.list[str]:
        """One eval and one jsonl run per model (the base, as it was asked for, and the
        fine-tuned one): the perplexity of each held-out completion after its prompt."""
        if self._evals is None:
            return []
        evals, runs = self._evals
        result = job.result or {}
        viewer = Viewer(job.owner_key_id)
        made = []
        models = (
            ("base", str(job.input["model"])),
            ("fine-tuned", str(result["fine_tuned_model"])),
        )
        for label, model in models:
            try:
                info = evals.create(
                    owner_key_id=job.owner_key_id,
                    name=f"held-out perplexity of {job.id}: {label}",
                    data_source_config={
                        "type": "custom",
                        "item_schema": ITEM_SCHEMA,
                        "include_sample_schema": False,
                    },
                    testing_criteria=[{**GRADER, "model": model}],
                    metadata={"fine_tuning_job": job.id},
                )
                source = {"type": "file_id", "id": str(result["eval_file_id"])}
                body = RunCreate(
                    name=f"{label}: {model}", data_source={"type": "jsonl", "source": source}
                )
                made.append(runs.create_for(viewer, info.id, body, None).id)
            except LmaasError as exc:
                log.warning("the held-out eval of %s on %s was not made: %s", job.id, model, exc)
        if made:
            self._on_queued()
        return made

    async def run_deployer(self, interval: float = 2.0) -> None:
        while True:
            try:
                await self.deploy_finished()
            except Exception:
                log.exception("deploying fine-tuned models failed")
            await asyncio.sleep(interval)


def _seq(cursor: str, prefix: str, job_id: str) -> int:
    head, _, tail = cursor.rpartition("-")
    if head != f"{prefix}{job_id}" or not tail.isdigit():
        raise InvalidRequestError(
            f"after must be an id this list gave ({prefix}...)", param="after"
        )
    return int(tail)
