"""What the understanding endpoints share: picking a model that can do the task, input
limits, running a task with metrics, and token log-likelihoods on either backend."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from starlette.requests import Request

from lmaas.engine.client import EngineClient
from lmaas.errors import InternalError, InvalidRequestError, ServiceUnavailableError
from lmaas.gateway.auth import Authenticator
from lmaas.gateway.serving.common import (
    RequestTiming,
    ServingBase,
    check_admission,
    engine_request_id,
    resolve_engine,
    until_disconnected,
)
from lmaas.keys import KeyInfo
from lmaas.protocol.engine import GenerateRequest, ModelInfo
from lmaas.protocol.tasks import GENERATE, SCORE, TaskRequest, TaskResult

T = TypeVar("T")

CAPABILITY_WORDS = {
    "embed": "embed",
    "classify": "classify with their own labels",
    "score": "score text (zero-shot classify, NLI and /v1/score)",
    "tokenize": "tokenize",
    "generate": "generate",
    "fill_mask": "fill masks (a *ForMaskedLM model)",
    "embed_tokens": "embed tokens (an encoder)",
}


class ClientGone(Exception):
    """The client disconnected while its request was running."""


class TaskServing(ServingBase):
    """Base of the understanding endpoints' serving objects."""

    async def engine_for(
        self, model: str, request: Request, key: KeyInfo | None
    ) -> tuple[EngineClient, ModelInfo]:
        Authenticator.authorize_model(key, model)
        engine = resolve_engine(self.engines, model)
        request.state.model = engine.name
        await engine.until_ready()  # held while a deployment scales from zero
        info = engine.info
        if info is None:
            raise ServiceUnavailableError(f"model '{engine.name}' is still loading")
        request.state.timing = RequestTiming(model=engine.name)
        return engine, info

    def require(self, engine: EngineClient, info: ModelInfo, capability: str) -> None:
        """Refuse with a 400 that names the served models that can do ``capability``."""
        if capability in info.capabilities:
            return
        raise InvalidRequestError(
            f"model '{engine.name}' cannot {CAPABILITY_WORDS.get(capability, capability)} "
            f"(it can: {', '.join(info.capabilities)}); "
            f"models that can: {', '.join(self.models_that(capability)) or 'none served'}",
            param="model",
            code="unsupported_task",
        )

    def models_that(self, capability: str) -> list[str]:
        return sorted(
            name
            for name, engine in self.engines.items()
            if engine.info is not None and capability in engine.info.capabilities
        )

    def check_count(self, count: int, param: str = "input") -> None:
        if count == 0:
            raise InvalidRequestError(f"{param} is empty", param=param)
        if count > self.limits.max_inputs:
            raise InvalidRequestError(
                f"{count} inputs given; this server allows at most {self.limits.max_inputs} "
                "per request",
                param=param,
            )

    async def guarded(self, request: Request, work: Awaitable[T]) -> T:
        """Run ``work`` unless the client leaves first (then raise ``ClientGone``)."""
        result = await until_disconnected(request, _boxed(work))
        if result is None:
            raise ClientGone
        return result[0]

    async def run(
        self, engine: EngineClient, request: Request, task: TaskRequest, *, sequences: int = 1
    ) -> TaskResult:
        check_admission(engine, self.limits, sequences)
        start = time.monotonic()
        result = await self.guarded(request, engine.run_task(task))
        self.observe(engine.name, task.kind, start, task.size(), result)
        return result

    def observe(
        self, model: str, kind: str, start: float, inputs: int, result: TaskResult | None
    ) -> None:
        m = self.metrics
        m.task_latency.labels(model, kind).observe(time.monotonic() - start)
        m.task_inputs.labels(model, kind).inc(inputs)
        if result is not None:
            m.task_batch_size.labels(model).observe(result.batch_size)
            m.prompt_tokens.labels(model).inc(result.prompt_tokens)

    async def tokenize(
        self,
        engine: EngineClient,
        request: Request,
        request_id: str,
        texts: list[str],
        *,
        add_special: bool,
    ) -> list[list[int]]:
        task = TaskRequest(
            request_id=engine_request_id(request_id, 0),
            kind="tokenize",
            texts=texts,
            add_special=add_special,
        )
        result = await self.guarded(request, engine.run_task(task))
        return result.token_ids or []

    async def logprobs(
        self,
        engine: EngineClient,
        info: ModelInfo,
        request: Request,
        request_id: str,
        seqs: list[list[int]],
        starts: list[int],
        *,
        truncate: bool,
    ) -> list[tuple[list[float], list[str]]]:
        """The logprob of every token of ``seqs[i]`` from ``starts[i]`` on (and its text).

        llama.cpp models answer through the generation path (prompt logprobs with
        ``max_tokens: 0``, as completions' ``echo`` does); transformers models run a score
        task, all sequences in shared forward passes.
        """
        self.require(engine, info, SCORE)
        seqs, starts = self._fit(info, seqs, starts, truncate=truncate)
        if info.backend == "llamacpp" and GENERATE in info.capabilities:
            # A request's own sequences queue in the worker behind one another; counting all
            # of them (256 inputs x 32 labels) against the queue would refuse a request within
            # the documented limits on an idle server. At most one batch's worth is counted.
            check_admission(engine, self.limits, min(len(seqs), max(engine.capacity, 1)))
            return await self.guarded(
                request, self._via_generation(engine, request_id, seqs, starts)
            )
        task = TaskRequest(
            request_id=engine_request_id(request_id, 0),
            kind="score",
            token_ids=seqs,
            score_from=starts,
        )
        result = await self.run(engine, request, task, sequences=1)
        return list(zip(result.logprobs or [], result.tokens or [], strict=True))

    @staticmethod
    def _fit(
        info: ModelInfo, seqs: list[list[int]], starts: list[int], *, truncate: bool
    ) -> tuple[list[list[int]], list[int]]:
        limit = info.max_model_len
        over = next((i for i, s in enumerate(seqs) if len(s) > limit), None)
        if over is None:
            return seqs, starts
        if not truncate:
            raise InvalidRequestError(
                f"input {over} is {len(seqs[over])} tokens; model '{info.name}' reads at most "
                f"{limit}; shorten it or set truncate: true",
                param="input",
                code="context_length_exceeded",
            )
        # Keep the end (what is scored) and drop the oldest context.
        fitted, moved = [], []
        for seq, start in zip(seqs, starts, strict=True):
            cut = max(len(seq) - limit, 0)
            fitted.append(seq[cut:])
            moved.append(max(start - cut, 1))
        return fitted, moved

    async def _via_generation(
        self, engine: EngineClient, request_id: str, seqs: list[list[int]], starts: list[int]
    ) -> list[tuple[list[float], list[str]]]:
        async def one(i: int) -> tuple[list[float], list[str]]:
            req = GenerateRequest(
                request_id=engine_request_id(request_id, i),
                prompt=seqs[i],
                add_bos=False,
                max_tokens=0,
                prompt_logprobs=0,
            )
            entries = None
            async for event in engine.generate(req):
                if event.prompt_logprobs is not None:
                    entries = event.prompt_logprobs
            if entries is None:
                raise InternalError("the engine returned no prompt logprobs")
            scored = entries[max(starts[i], 1) :]
            return [float(e.logprob or 0.0) for e in scored], [e.token for e in scored]

        tasks = [asyncio.ensure_future(one(i)) for i in range(len(seqs))]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:  # one failed or the client left: abort the rest
                task.cancel()


async def _boxed(work: Awaitable[T]) -> tuple[T]:
    # until_disconnected returns None for "client gone"; box the value so None stays a value.
    return (await work,)


def split_template(template: str) -> tuple[str, str]:
    """``"This text is about {}."`` -> (``"This text is about"``, ``" {}."`` as the part a label
    fills); the space before the slot belongs to the label, as a tokenizer would join it.

    The label goes in as it is (``str.replace``, never ``str.format``), and no other brace is
    allowed: a ``{0.__class__}`` or ``{:>999999999}`` after the slot must not reach a format
    call, and the template means exactly what it says."""
    if template.count("{}") != 1:
        raise InvalidRequestError(
            "hypothesis_template must contain exactly one {} where the label goes",
            param="hypothesis_template",
        )
    before, after = template.split("{}")
    if any(brace in before + after for brace in "{}"):
        raise InvalidRequestError(
            "hypothesis_template may hold no brace but the one {} where the label goes",
            param="hypothesis_template",
        )
    stripped = before.rstrip()
    return stripped, before[len(stripped) :] + "{}" + after


def softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]
