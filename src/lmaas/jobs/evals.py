"""The eval-run handler: sample and grade every item of a run, keep each output item as it
comes, then the run's figures, attached to the store version it evaluated.

Items run ``item_concurrency`` at a time. A completions run asks the model through the
gateway's own ``/v1/chat/completions`` at the ``batch`` priority (interactive users go first);
graders that need a model (cosine, perplexity, label) call ``/v1/embeddings``, ``/v1/score``
and ``/v1/classify`` the same way. Each finished item is recorded at once (``job_items``, keyed
by its index), so a run resumed after a crash grades only what was not done; the output items
stay in the table and are what ``GET .../output_items`` pages through.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

from lmaas.db import utc_now
from lmaas.jobs.batch_lines import numbered_lines
from lmaas.jobs.context import JobContext, JobFailed, LeaseLost, Outcome
from lmaas.jobs.eval_items import (
    ItemError,
    chat_body,
    failed_sample,
    item_status,
    messages_for,
    parse_line,
    sample_of,
    split_entry,
    summarize,
)
from lmaas.jobs.gateway import GatewayClient, GatewayUnreachable, RetryPolicy, post_retrying
from lmaas.jobs.graders import GradingError, grade, parse_criteria
from lmaas.jobs.item_runs import ItemSink, run_items
from lmaas.jobs.leases import Item
from lmaas.jobs.storage import JobFiles
from lmaas.protocol.evals import GraderSpec
from lmaas.store.evaluations import Evaluations

log = logging.getLogger(__name__)

KIND: Final = "eval_run"
_READ: Final = 256


class GatewayModels:
    """:class:`lmaas.jobs.graders.GraderModels` over the gateway, as the run's owner."""

    def __init__(self, gateway: GatewayClient, owner: str | None, run_id: str, retry: RetryPolicy):
        self._gateway, self._owner, self._run, self._retry = gateway, owner, run_id, retry
        self._ids = itertools.count(1)

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            reply = await post_retrying(
                self._gateway,
                path,
                body,
                owner=self._owner,
                request_id=f"{self._run}-g{next(self._ids)}",
                retry=self._retry,
            )
        except GatewayUnreachable as exc:
            raise GradingError("gateway_unreachable", str(exc)) from None
        if not reply.ok:
            error = (reply.body or {}).get("error") if isinstance(reply.body, dict) else None
            message = (error or {}).get("message") or f"{path} answered {reply.status}"
            raise GradingError((error or {}).get("code") or f"http_{reply.status}", message)
        return reply.body

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        answer = await self._post("/v1/embeddings", {"model": model, "input": texts})
        return [list(map(float, d["embedding"])) for d in answer["data"]]

    async def score(self, model: str, text: str, prompt: str | None) -> tuple[float, int]:
        given: Any = text if prompt is None else {"prompt": prompt, "continuation": text}
        answer = await self._post("/v1/score", {"model": model, "input": given})
        entry = answer["data"][0]
        return float(entry["total_logprob"]), int(entry["num_tokens"])

    async def classify(self, model: str, text: str, labels: list[str] | None) -> str:
        body: dict[str, Any] = {"model": model, "input": text}
        if labels:
            body["candidate_labels"] = labels
        answer = await self._post("/v1/classify", body)
        return str(answer["data"][0]["label"])


class EvalRunHandler:
    kind = KIND

    def __init__(
        self,
        gateway: GatewayClient,
        files: JobFiles,
        evaluations: Evaluations,
        *,
        item_concurrency: int = 8,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.gateway = gateway
        self.files = files
        self.evaluations = evaluations
        self.item_concurrency = item_concurrency
        self.retry = retry or RetryPolicy()

    async def run(self, ctx: JobContext) -> Outcome:
        job = ctx.job
        specs = parse_criteria(job.input["criteria"])
        resume = await ctx.call(ctx.leases.resume, job.id, ctx.runner, job.progress.total)
        if resume is None:
            raise LeaseLost
        if not ctx.cancelled.is_set():
            before = len(resume.done_ids)
            total = job.progress.total
            earlier = f" ({before} were done by an earlier attempt)" if before else ""
            await ctx.event("info", f"grading {total - before} of {total} items{earlier}")
            sink = ItemSink(ctx, total, done=before, failed=resume.failed)
            models = GatewayModels(self.gateway, job.owner_key_id, job.id, self.retry)
            await run_items(
                ctx,
                sink,
                self._entries(ctx),
                lambda entry: self._item(ctx, specs, models, *entry),
                key=lambda entry: str(entry[0]),
                skip=resume.done_ids,
                concurrency=self.item_concurrency,
            )
        return await self._finalize(ctx, specs)

    # -- the items ----------------------------------------------------------------------------

    async def _entries(self, ctx: JobContext) -> AsyncIterator[tuple[int, Any]]:
        """(index, raw line or inline entry) of every item."""
        source = ctx.job.input["data_source"]["source"]
        if source["type"] == "file_content":
            for index, entry in enumerate(source["content"]):
                yield index, entry
            return
        handle = await ctx.call(self._open, str(source["id"]))
        try:
            lines = enumerate(raw for _, raw in numbered_lines(handle))

            def some() -> list[tuple[int, bytes]]:
                return list(itertools.islice(lines, _READ))

            while batch := await asyncio.to_thread(some):
                for entry in batch:
                    yield entry
        finally:
            handle.close()

    def _open(self, file_id: str) -> Any:
        try:
            return self.files.open_input(file_id)
        except Exception as exc:
            raise JobFailed(
                f"the data source file {file_id} cannot be read ({type(exc).__name__})",
                code="input_file_unreadable",
            ) from exc

    async def _item(
        self,
        ctx: JobContext,
        specs: list[GraderSpec],
        models: GatewayModels,
        index: int,
        entry: Any,
    ) -> Item:
        given = ctx.job.input
        sample: dict[str, Any] | None = None
        tokens = (0, 0)
        try:
            item, given_sample = (
                parse_line(entry) if isinstance(entry, bytes) else split_entry(entry)
            )
        except ItemError as exc:
            return _item_of(index, {}, [], failed_sample(None, exc.code, exc.message), tokens)
        scope: dict[str, Any] = {"item": item, "sample": given_sample}
        if given.get("input_messages") is not None:
            sample, tokens = await self._sample(ctx, index, scope)
            if sample.get("error"):
                return _item_of(index, item, [], sample, tokens)
        results = [await self._grade(spec, scope, models, given.get("model")) for spec in specs]
        return _item_of(index, item, results, sample, tokens)

    async def _sample(
        self, ctx: JobContext, index: int, scope: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[int, int]]:
        given = ctx.job.input
        try:
            messages = messages_for(given["input_messages"], scope)
        except ItemError as exc:
            return failed_sample(None, exc.code, exc.message), (0, 0)
        body = chat_body(str(given["model"]), messages, given.get("sampling_params") or {})
        try:
            reply = await post_retrying(
                self.gateway,
                "/v1/chat/completions",
                body,
                owner=ctx.job.owner_key_id,
                request_id=f"{ctx.job.id}-{index}",
                retry=self.retry,
            )
        except GatewayUnreachable as exc:
            return failed_sample(body, "gateway_unreachable", str(exc)), (0, 0)
        if not reply.ok or not isinstance(reply.body, dict):
            error = reply.body.get("error") if isinstance(reply.body, dict) else None
            code = (error or {}).get("code") or f"http_{reply.status}"
            message = (error or {}).get("message") or f"the model answered {reply.status}"
            return failed_sample(body, str(code), str(message)), (0, 0)
        seen, shown = sample_of(reply.body, body)
        scope["sample"] = seen
        usage = shown["usage"]
        return shown, (usage["prompt_tokens"], usage["completion_tokens"])

    @staticmethod
    async def _grade(
        spec: GraderSpec, scope: dict[str, Any], models: GatewayModels, model: str | None
    ) -> dict[str, Any]:
        try:
            return await grade(spec, scope, models, model)
        except GradingError as exc:
            return {
                "name": spec.name,
                "type": spec.type,
                "passed": False,
                "score": None,
                "sample": None,
                "error": {"code": exc.code, "message": exc.message},
            }

    # -- the result -----------------------------------------------------------------------------

    async def _finalize(self, ctx: JobContext, specs: list[GraderSpec]) -> Outcome:
        job = ctx.job
        if not await ctx.call(ctx.leases.begin_finalizing, job.id, ctx.runner):
            raise LeaseLost
        summary, samples = await ctx.call(_summary, ctx, specs)
        prompt, completion = await ctx.call(ctx.leases.usage, job.id)
        model = job.input.get("model")
        usage = []
        if model is not None and job.input.get("input_messages") is not None:
            usage.append(
                {
                    "model_name": model,
                    "invocation_count": samples,
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                    "cached_tokens": 0,
                }
            )
        result = summary | {"per_model_usage": usage}
        counts = summary["result_counts"]
        outcome = ctx.ended(
            ok_message=(
                f"{counts['passed']} items passed, {counts['failed']} failed, "
                f"{counts['errored']} errored"
            ),
            result=result,
        )
        version = job.input.get("model_version")
        if outcome.status == "completed" and isinstance(version, dict):
            await ctx.call(
                self.evaluations.attach,
                str(version["model"]),
                int(version["number"]),
                run_id=job.id,
                eval_id=str(job.input["eval_id"]),
                eval_name=str(job.input.get("eval_name", "")),
                results=summary,
            )
        return outcome


def _summary(ctx: JobContext, specs: list[GraderSpec]) -> tuple[dict[str, Any], int]:
    samples = 0

    def outputs() -> Iterator[dict[str, Any]]:
        nonlocal samples
        for ok in (True, False):
            for raw in ctx.leases.outputs(ctx.job.id, ok=ok):
                output = json.loads(raw)
                sample = output.get("sample")
                if sample is not None and not sample.get("error"):
                    samples += 1
                yield output

    summary = summarize(specs, outputs())
    return summary, samples


def _item_of(
    index: int,
    item: dict[str, Any],
    results: list[dict[str, Any]],
    sample: dict[str, Any] | None,
    tokens: tuple[int, int],
) -> Item:
    status = item_status(results, sample)
    output = {
        "datasource_item_id": index,
        "datasource_item": item,
        "results": results,
        "sample": sample,
        "status": status,
        "created_at": int(utc_now().timestamp()),
    }
    return Item(
        custom_id=str(index),
        line=index + 1,
        ok=status != "error",
        output=json.dumps(output, ensure_ascii=False, separators=(",", ":")),
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
    )
