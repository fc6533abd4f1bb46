"""The Evals API's runs (``/v1/evals/{id}/runs``) and their output items, over the job store:
a run is a job of kind ``eval_run`` whose ``group_id`` is its eval. Checks before anything is
written are :class:`lmaas.gateway.management.eval_plans.RunPlanner`'s; the grading happens in
the job runner (:mod:`lmaas.jobs.evals`)."""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import Callable
from typing import Any, Final

from lmaas.errors import InvalidRequestError, NotFoundError
from lmaas.gateway.management.batches import check_metadata
from lmaas.gateway.management.eval_plans import RunPlanner
from lmaas.gateway.management.files import viewer_of
from lmaas.jobs.eval_store import EvalStore
from lmaas.jobs.evals import KIND
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
)
from lmaas.keys import KeyInfo
from lmaas.protocol.evals import (
    CriterionResult,
    EvalError,
    ModelUsage,
    OutputItem,
    OutputItemList,
    ResultCounts,
    Run,
    RunCreate,
    RunDeleted,
    RunList,
    RunProgress,
)
from lmaas.store.files import Viewer

MAX_LIST_LIMIT: Final = 100
RUN_STATUSES: Final = {
    QUEUED: "queued",
    IN_PROGRESS: "in_progress",
    FINALIZING: "in_progress",
    CANCELLING: "in_progress",
    COMPLETED: "completed",
    CANCELLED: "canceled",
    FAILED: "failed",
}
_OUTPUT_ITEM: Final = "outputitem_"


def run_object(job: JobInfo) -> Run:
    given, result = job.input, job.result or {}
    progress = job.progress
    counts = result.get("result_counts") or {
        "total": progress.total,
        "errored": progress.failed,
    }
    version = given.get("model_version")
    return Run(
        id=job.id,
        eval_id=str(job.group_id),
        name=str(given.get("name") or job.id),
        model=given.get("model"),
        status=RUN_STATUSES.get(job.status, "failed"),
        created_at=int(job.created_at.timestamp()),
        data_source=given["data_source"],
        error=EvalError(**job.error) if job.error else None,
        result_counts=ResultCounts(**counts),
        per_model_usage=[ModelUsage(**u) for u in result.get("per_model_usage", [])],
        per_testing_criteria_results=[
            CriterionResult(**c) for c in result.get("per_testing_criteria_results", [])
        ],
        report_url=f"/v1/evals/{job.group_id}/runs/{job.id}",
        metadata=given.get("metadata"),
        progress=RunProgress(
            total=progress.total,
            done=progress.done,
            eta_at=int(progress.eta_at.timestamp()) if progress.eta_at else None,
        ),
        model_version=f"{version['model']}:{version['number']}" if version else None,
    )


def output_item_id(run_id: str, index: int) -> str:
    return f"{_OUTPUT_ITEM}{run_id.removeprefix(KIND.replace('_', '') + '_')}_{index}"


def _index_of(run_id: str, item_id: str) -> int | None:
    head, _, index = item_id.rpartition("_")
    if head != output_item_id(run_id, 0).rpartition("_")[0] or not index.isdigit():
        return None
    return int(index)


class EvalRunManagement:
    """The run and output-item operations; kept on ``app.state``."""

    def __init__(
        self,
        evals: EvalStore,
        jobs: JobStore,
        planner: RunPlanner,
        *,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._evals = evals
        self._jobs = jobs
        self._planner = planner
        self._on_queued = on_queued

    async def create(self, key: KeyInfo | None, eval_id: str, body: RunCreate) -> Run:
        metadata = check_metadata(body.metadata)
        job = await asyncio.to_thread(self.create_for, viewer_of(key), eval_id, body, metadata)
        self._on_queued()
        return run_object(job)

    def create_for(
        self, viewer: Viewer, eval_id: str, body: RunCreate, metadata: dict[str, str] | None
    ) -> JobInfo:
        """A queued run for ``viewer`` (blocking; the runner is not woken)."""
        info = self._evals.get(eval_id, viewer)
        source = body.data_source
        plan = self._planner.plan(viewer, info, source)
        given = {
            "eval_id": info.id,
            "eval_name": info.name,
            "name": body.name,
            "metadata": metadata,
            "data_source": source,
            "criteria": info.testing_criteria,
            "model": plan.model,
            "input_messages": source.get("input_messages") if plan.model else None,
            "sampling_params": source.get("sampling_params") if plan.model else None,
            "model_version": plan.model_version,
        }
        return self._jobs.create(
            KIND,
            id_prefix="evalrun",
            owner_key_id=viewer.key_id,
            input=given,
            input_file_id=plan.file_id,
            total=plan.items,
            message=f"queued: {plan.items} items of eval {info.id}",
            group_id=info.id,
        )

    def _run(self, viewer: Viewer, eval_id: str, run_id: str) -> JobInfo:
        self._evals.get(eval_id, viewer)
        job = self._jobs.get(run_id, viewer, kind=KIND)
        if job.group_id != eval_id:
            raise NotFoundError(
                f"eval {eval_id} has no run {run_id[:64]!r}", param="run_id", code="run_not_found"
            )
        return job

    async def retrieve(self, key: KeyInfo | None, eval_id: str, run_id: str) -> Run:
        return run_object(await asyncio.to_thread(self._run, viewer_of(key), eval_id, run_id))

    async def list(
        self,
        key: KeyInfo | None,
        eval_id: str,
        *,
        after: str | None,
        limit: int,
        order: str,
        status: str | None,
    ) -> RunList:
        viewer = viewer_of(key)
        statuses = None
        if status is not None:
            statuses = [job for job, run in RUN_STATUSES.items() if run == status]

        def page() -> Any:
            self._evals.get(eval_id, viewer)
            return self._jobs.list(
                viewer,
                kind=KIND,
                group_id=eval_id,
                statuses=statuses,
                after=after,
                limit=limit,
                newest_first=order == "desc",
            )

        found = await asyncio.to_thread(page)
        data = [run_object(job) for job in found.jobs]
        return RunList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=found.has_more,
        )

    async def cancel(self, key: KeyInfo | None, eval_id: str, run_id: str) -> Run:
        viewer = viewer_of(key)

        def cancel() -> JobInfo:
            self._run(viewer, eval_id, run_id)
            return self._jobs.cancel(run_id, viewer, kind=KIND)

        return run_object(await asyncio.to_thread(cancel))

    async def delete(self, key: KeyInfo | None, eval_id: str, run_id: str) -> RunDeleted:
        viewer = viewer_of(key)

        def delete() -> None:
            self._run(viewer, eval_id, run_id)
            self._jobs.delete(run_id, viewer, kind=KIND)

        await asyncio.to_thread(delete)
        return RunDeleted(run_id=run_id)

    # -- output items ---------------------------------------------------------------------------

    async def output_items(
        self,
        key: KeyInfo | None,
        eval_id: str,
        run_id: str,
        *,
        after: str | None,
        limit: int,
        order: str,
        status: str | None,
    ) -> OutputItemList:
        viewer = viewer_of(key)
        if after is not None and _index_of(run_id, after) is None:
            raise InvalidRequestError("after must be an output item id of this run", param="after")
        data, has_more = await asyncio.to_thread(
            self._items, viewer, eval_id, run_id, after, limit, order == "desc", status
        )
        return OutputItemList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=has_more,
        )

    def _items(
        self,
        viewer: Viewer,
        eval_id: str,
        run_id: str,
        after: str | None,
        limit: int,
        newest_first: bool,
        status: str | None,
    ) -> tuple[builtins.list[OutputItem], bool]:
        job = self._run(viewer, eval_id, run_id)
        index = _index_of(run_id, after) if after is not None else None
        line = index + 1 if index is not None else None
        found: builtins.list[OutputItem] = []
        while True:
            rows = self._jobs.items(job.id, after=line, limit=limit + 1, newest_first=newest_first)
            for row_line, raw in rows:
                line = row_line
                item = _output_item(job, raw)
                if status is None or item.status == status:
                    found.append(item)
                if len(found) > limit:
                    return found[:limit], True
            if len(rows) <= limit:
                return found, False

    async def output_item(
        self, key: KeyInfo | None, eval_id: str, run_id: str, item_id: str
    ) -> OutputItem:
        viewer = viewer_of(key)
        index = _index_of(run_id, item_id)
        missing = NotFoundError(
            f"run {run_id[:64]} has no output item {item_id[:64]!r}",
            param="output_item_id",
            code="output_item_not_found",
        )
        if index is None:
            raise missing

        def find() -> OutputItem:
            job = self._run(viewer, eval_id, run_id)
            rows = self._jobs.items(job.id, after=index, limit=1)
            if not rows or rows[0][0] != index + 1:
                raise missing
            return _output_item(job, rows[0][1])

        return await asyncio.to_thread(find)


def _output_item(job: JobInfo, raw: str) -> OutputItem:
    output = json.loads(raw)
    index = int(output["datasource_item_id"])
    return OutputItem(
        id=output_item_id(job.id, index),
        run_id=job.id,
        eval_id=str(job.group_id),
        created_at=int(output.get("created_at", job.created_at.timestamp())),
        status=output["status"],
        datasource_item_id=index,
        datasource_item=output["datasource_item"],
        results=output["results"],
        sample=output.get("sample"),
    )
