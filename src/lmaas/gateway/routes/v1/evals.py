"""/v1/evals: OpenAI's Evals API (any active key; a key sees only its own evals and runs unless
it is an admin key). Runs grade in the job runner process, sampling through this gateway's own
endpoints at the ``batch`` priority."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from lmaas.gateway.deps import EvalManagementDep, EvalRunManagementDep, InferenceKey
from lmaas.gateway.management.evals import MAX_LIST_LIMIT
from lmaas.protocol.evals import (
    Eval,
    EvalCreate,
    EvalDeleted,
    EvalList,
    EvalUpdate,
    OutputItem,
    OutputItemList,
    Run,
    RunCreate,
    RunDeleted,
    RunList,
    RunStatus,
)

router = APIRouter(prefix="/v1/evals", tags=["evals"])
Cursor = Annotated[str | None, Query(max_length=96)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)]
Order = Annotated[Literal["asc", "desc"], Query()]


@router.post("", response_model=Eval)
async def create_eval(body: EvalCreate, evals: EvalManagementDep, key: InferenceKey) -> Eval:
    """An item schema (`data_source_config`, type `custom`) and graders (`testing_criteria`):
    `string_check`, `text_similarity` (bleu, gleu, rouge_*, fuzzy_match, cosine), and lmaas's
    `perplexity` and `label`."""
    return await evals.create(key, body)


@router.get("", response_model=EvalList)
async def list_evals(
    evals: EvalManagementDep,
    key: InferenceKey,
    after: Cursor = None,
    limit: Limit = 20,
    order: Order = "asc",
) -> EvalList:
    return await evals.list(key, after=after, limit=limit, order=order)


@router.get("/{eval_id}", response_model=Eval)
async def retrieve_eval(eval_id: str, evals: EvalManagementDep, key: InferenceKey) -> Eval:
    return await evals.retrieve(key, eval_id)


@router.post("/{eval_id}", response_model=Eval)
async def update_eval(
    eval_id: str, body: EvalUpdate, evals: EvalManagementDep, key: InferenceKey
) -> Eval:
    """Rename an eval or replace its metadata."""
    return await evals.update(key, eval_id, body)


@router.delete("/{eval_id}", response_model=EvalDeleted)
async def delete_eval(eval_id: str, evals: EvalManagementDep, key: InferenceKey) -> EvalDeleted:
    """Its runs that have not finished are cancelled."""
    return await evals.delete(key, eval_id)


@router.post("/{eval_id}/runs", response_model=Run)
async def create_run(
    eval_id: str, body: RunCreate, runs: EvalRunManagementDep, key: InferenceKey
) -> Run:
    """Grade items as given (`jsonl`) or sampled from a served model (`completions`); the run
    is queued and graded in the job runner."""
    return await runs.create(key, eval_id, body)


@router.get("/{eval_id}/runs", response_model=RunList)
async def list_runs(
    eval_id: str,
    runs: EvalRunManagementDep,
    key: InferenceKey,
    after: Cursor = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: Annotated[RunStatus | None, Query()] = None,
) -> RunList:
    return await runs.list(key, eval_id, after=after, limit=limit, order=order, status=status)


@router.get("/{eval_id}/runs/{run_id}", response_model=Run)
async def retrieve_run(
    eval_id: str, run_id: str, runs: EvalRunManagementDep, key: InferenceKey
) -> Run:
    return await runs.retrieve(key, eval_id, run_id)


@router.post("/{eval_id}/runs/{run_id}", response_model=Run)
async def cancel_run(
    eval_id: str, run_id: str, runs: EvalRunManagementDep, key: InferenceKey
) -> Run:
    """Cancel a run (the SDK's `runs.cancel`); 409 once it has finished."""
    return await runs.cancel(key, eval_id, run_id)


@router.post("/{eval_id}/runs/{run_id}/cancel", response_model=Run)
async def cancel_run_path(
    eval_id: str, run_id: str, runs: EvalRunManagementDep, key: InferenceKey
) -> Run:
    """The same cancel at a path of its own."""
    return await runs.cancel(key, eval_id, run_id)


@router.delete("/{eval_id}/runs/{run_id}", response_model=RunDeleted)
async def delete_run(
    eval_id: str, run_id: str, runs: EvalRunManagementDep, key: InferenceKey
) -> RunDeleted:
    """Forget a finished run and its output items (409 while it runs)."""
    return await runs.delete(key, eval_id, run_id)


@router.get("/{eval_id}/runs/{run_id}/output_items", response_model=OutputItemList)
async def list_output_items(
    eval_id: str,
    run_id: str,
    runs: EvalRunManagementDep,
    key: InferenceKey,
    after: Cursor = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: Annotated[Literal["pass", "fail", "error"] | None, Query()] = None,
) -> OutputItemList:
    """Each graded item: the item, the sample, and every grader's result."""
    return await runs.output_items(
        key, eval_id, run_id, after=after, limit=limit, order=order, status=status
    )


@router.get("/{eval_id}/runs/{run_id}/output_items/{output_item_id}", response_model=OutputItem)
async def retrieve_output_item(
    eval_id: str,
    run_id: str,
    output_item_id: str,
    runs: EvalRunManagementDep,
    key: InferenceKey,
) -> OutputItem:
    return await runs.output_item(key, eval_id, run_id, output_item_id)
