"""What chat and completions share: validation against limits, sampling, fan-out, timing."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from starlette.requests import Request

from lmaas.config import Limits
from lmaas.engine.client import EngineClient
from lmaas.engine.directory import EngineDirectory
from lmaas.errors import InvalidRequestError, NotFoundError, OverloadedError
from lmaas.gateway.serving.admission import Admission
from lmaas.gateway.serving.schema_limits import check_schema_limits
from lmaas.protocol.engine import GenerateRequest, ModelInfo, SamplingParams, TokenEvent
from lmaas.protocol.openai import ResponseFormat, SamplingFields
from lmaas.protocol.tasks import GENERATE
from lmaas.telemetry.metrics import Metrics

T = TypeVar("T")

_GREEDY_EPS = 1e-5


class ServingBase:
    """What every endpoint's serving object holds."""

    def __init__(
        self,
        engines: dict[str, EngineClient],
        limits: Limits,
        metrics: Metrics,
        *,
        store_prompts: bool = False,
        admission: Admission | None = None,
    ) -> None:
        self.engines = engines
        self.limits = limits
        self.metrics = metrics
        self.store_prompts = store_prompts
        # Generation endpoints share one (their reservations count against the same models).
        self.admission = admission or Admission(limits)


def resolve_engine(engines: dict[str, EngineClient], model: str) -> EngineClient:
    """The engine serving ``model``: a served name, or (with a deployment manager) a model of
    the store as ``name``, ``name:alias`` or ``name:3`` that a deployment serves."""
    engine = engines.lookup(model) if isinstance(engines, EngineDirectory) else engines.get(model)
    if engine is None:
        raise NotFoundError(
            f"The model '{model}' does not exist; available: {', '.join(sorted(engines))}",
            param="model",
        )
    return engine


def require_generation(
    engines: dict[str, EngineClient], engine: EngineClient, info: ModelInfo
) -> None:
    """Refuse (400, ``unsupported_task``) a text generation from a model that cannot generate
    (an embeddings or classifier model), naming the served models that can, before any
    admission or template work."""
    if GENERATE in info.capabilities:
        return
    able = sorted(
        name
        for name, other in engines.items()
        if other.info is not None and GENERATE in other.info.capabilities
    )
    raise InvalidRequestError(
        f"model '{engine.name}' cannot generate text (it can: {', '.join(info.capabilities)}); "
        f"models that can: {', '.join(able) or 'none served'}",
        param="model",
        code="unsupported_task",
    )


def check_admission(engine: EngineClient, limits: Limits, new_sequences: int) -> None:
    """Refuse at once when the model cannot serve or its bounded queue is full."""
    from lmaas.errors import ServiceUnavailableError

    capacity = engine.capacity
    if capacity == 0:
        raise ServiceUnavailableError(
            f"model '{engine.name}' is not ready (its worker is starting or restarting); "
            "retry shortly"
        )
    if engine.outstanding + new_sequences > capacity + limits.max_queue:
        raise OverloadedError(
            f"model '{engine.name}' is at capacity ({engine.outstanding} requests in flight); "
            "retry after the delay in Retry-After",
            retry_after=1,
        )


def validate_common(body: SamplingFields, limits: Limits, max_tokens: int | None) -> None:
    if body.n > limits.max_n:
        raise InvalidRequestError(
            f"n is {body.n}; this server allows at most {limits.max_n}", param="n"
        )
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise InvalidRequestError(
            f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}",
            param="max_tokens",
        )
    stops = body.stop_list()
    if len(stops) > limits.max_stop:
        raise InvalidRequestError(
            f"{len(stops)} stop strings given; at most {limits.max_stop} are allowed",
            param="stop",
        )
    if any(not s for s in stops):
        raise InvalidRequestError("stop strings must not be empty", param="stop")
    temperature = 1.0 if body.temperature is None else float(body.temperature)
    if body.n > 1 and temperature < _GREEDY_EPS and not body.use_beam_search:
        raise InvalidRequestError(
            "n > 1 with temperature 0 (greedy) would return identical choices; use temperature > 0",
            param="n",
        )
    if body.stream_options is not None and not body.stream:
        raise InvalidRequestError(
            "stream_options is only allowed when stream is true", param="stream_options"
        )
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
        # Before check_schema: its validator recurses, and the worker must never see more.
        check_schema_limits(fmt.json_schema.schema_, limits)


def check_schema(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    """The JSON schema the output must follow: ``{}`` for any JSON object, ``None`` for text.

    Its size is bounded by ``validate_common`` (``schema_limits``), which runs first."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {}
    if fmt.json_schema is None:
        raise InvalidRequestError(
            "response_format of type json_schema needs a json_schema object",
            param="response_format.json_schema",
        )
    schema = fmt.json_schema.schema_
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequestError(
            f"invalid JSON schema: {exc.message}", param="response_format.json_schema.schema"
        ) from exc
    if not schema:
        return {}
    return schema


def build_sampling(
    body: SamplingFields, info: ModelInfo | None, json_schema: dict[str, Any] | None
) -> SamplingParams:
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        token = int(key)
        if info is not None and not 0 <= token < info.n_vocab:
            raise InvalidRequestError(
                f"logit_bias token id {token} is outside the vocabulary (0..{info.n_vocab - 1})",
                param="logit_bias",
            )
        bias[token] = float(value)
    top_k = body.top_k if body.top_k is not None else -1
    return SamplingParams(
        temperature=1.0 if body.temperature is None else float(body.temperature),
        top_k=top_k if top_k > 0 else -1,
        top_p=1.0 if body.top_p is None else float(body.top_p),
        min_p=0.0 if body.min_p is None else float(body.min_p),
        repetition_penalty=1.0
        if body.repetition_penalty is None
        else float(body.repetition_penalty),
        presence_penalty=float(body.presence_penalty or 0.0),
        frequency_penalty=float(body.frequency_penalty or 0.0),
        seed=body.seed,
        logit_bias=bias,
        json_schema=json_schema,
    )


_TASK_PARAMS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "n",
    "stream",
    "max_tokens",
    "stop",
    "logit_bias",
)


def record_params(body: SamplingFields, **extra: Any) -> dict[str, Any]:
    """The request's sampling settings for its request record (unset ones left out)."""
    params = {k: getattr(body, k) for k in _TASK_PARAMS if getattr(body, k, None) is not None}
    params.update({k: v for k, v in extra.items() if v is not None})
    return params


def seeds_for(base: SamplingParams, n: int) -> list[SamplingParams]:
    """One copy per choice; choice i uses seed + i so that a seeded request is reproducible."""
    if base.temperature < _GREEDY_EPS:
        return [base] * n
    start = base.seed if base.seed is not None else random.getrandbits(32)
    return [base.model_copy(update={"seed": (start + i) & 0xFFFFFFFF}) for i in range(n)]


def engine_request_id(request_id: str, index: int) -> str:
    # Client-supplied request ids may repeat; engine ids must not.
    return f"{request_id}-{index}-{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class RequestTiming:
    """Per-request latency bookkeeping for metrics and the access log."""

    model: str
    arrival: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_choice_tokens: int = 0
    queue_time: float | None = None
    error: str | None = None  # an error that ended a stream after its first byte
    # Prefix cache: prompt tokens of every engine sequence, and those the cache supplied.
    cache_queries: int = 0
    cache_hits: int = 0
    # Engine sequences that ended, by finish reason (a choice each; a beam search once).
    finish_reasons: dict[str, int] = field(default_factory=dict)

    def on_event(self, event: TokenEvent) -> None:
        now = time.monotonic()
        if event.finish_reason is not None:
            reason = event.finish_reason.value
            self.finish_reasons[reason] = self.finish_reasons.get(reason, 0) + 1
        if event.token_ids:
            if self.first_token is None:
                self.first_token = now
            self.last_token = now
        if event.queue_time is not None:  # a sequence's first event after admission
            self.cache_queries += event.prompt_tokens
            self.cache_hits += event.cached_tokens
            if self.queue_time is None:
                self.queue_time = event.queue_time

    def record(self, metrics: Metrics) -> None:
        end = self.last_token or time.monotonic()
        m = self.model
        metrics.e2e.labels(m).observe(end - self.arrival)
        if self.first_token is not None:
            metrics.ttft.labels(m).observe(self.first_token - self.arrival)
            if self.max_choice_tokens > 1 and self.last_token is not None:
                metrics.tpot.labels(m).observe(
                    (self.last_token - self.first_token) / (self.max_choice_tokens - 1)
                )
        if self.queue_time is not None:
            metrics.queue_time.labels(m).observe(self.queue_time)
        metrics.prompt_tokens.labels(m).inc(self.prompt_tokens)
        metrics.prefix_cache_queries.labels(m).inc(self.cache_queries)
        metrics.prefix_cache_hits.labels(m).inc(self.cache_hits)
        metrics.generation_tokens.labels(m).inc(self.completion_tokens)
        metrics.request_prompt_tokens.labels(m).observe(self.prompt_tokens)
        metrics.request_generation_tokens.labels(m).observe(self.completion_tokens)
        for reason, count in self.finish_reasons.items():
            metrics.finish_reasons.labels(m, reason).inc(count)

    def access_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if self.first_token is not None:
            fields["ttft_ms"] = round((self.first_token - self.arrival) * 1000, 1)
        if self.queue_time is not None:
            fields["queue_ms"] = round(self.queue_time * 1000, 1)
        return fields


async def merge_streams(
    streams: list[AsyncIterator[TokenEvent]],
) -> AsyncGenerator[tuple[int, TokenEvent], None]:
    """Interleave several event streams as ``(stream index, event)``.

    Every stream is started first (so refusals surface before any output); closing the merged
    iterator closes, and so aborts, every unfinished stream.
    """
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, TokenEvent | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[TokenEvent]) -> None:
        try:
            async for event in stream:
                queue.put_nowait((i, event))
            queue.put_nowait((i, None))
        except Exception as exc:
            queue.put_nowait((i, exc))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work`` unless the client disconnects first (then cancel it and return None)."""

    async def wait_disconnect() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # we are cancelled (a shutdown cut): so is the work, before we go
        task.cancel()
        await asyncio.wait({task})
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def first_event(
    request: Request, merged: AsyncGenerator[tuple[int, TokenEvent], None]
) -> tuple[int, TokenEvent] | None:
    """The first event of a request, or None if the client left while it was queued.

    Refusals (bad input, overload, a dead worker) raise here, before any response starts.
    """
    try:
        first = await until_disconnected(request, anext(merged))
    except BaseException:
        await merged.aclose()
        raise
    if first is None:
        await merged.aclose()
    return first


def new_generate_requests(
    request_id: str,
    prompt: str | list[int],
    sampling: list[SamplingParams],
    **kwargs: Any,
) -> list[GenerateRequest]:
    group = uuid.uuid4().hex if len(sampling) > 1 else None
    return [
        GenerateRequest(
            request_id=engine_request_id(request_id, i),
            prompt=prompt,
            sampling=s,
            group=group,
            group_size=len(sampling),
            **kwargs,
        )
        for i, s in enumerate(sampling)
    ]
