"""The generation pipeline that /v1/chat/completions and /v1/completions both run.

A request goes through one run, written once here:

1. ``GenerationServing.plan``: authorize the key for the model, resolve the engine, record the
   parameters, validate (the limits every endpoint shares, then the endpoint's own rules),
   choose beam search or sampling, check the output schema, build the prompts (a chat
   template renders in a child process, off the event loop: ``template.py``), check
   admission, and make the engine requests (``n`` choices per prompt with consecutive seeds,
   or one beam search per prompt);
2. ``GenerationServing.create``: merge the engine streams, wait for the first event (a client
   that leaves meanwhile aborts the request and gets 499), then stream server-sent events or
   collect one body (``GenerationRun``); an error after the first byte ends a stream with an
   error event and ``[DONE]``. Usage, ``RequestTiming`` and metrics are kept here, as is what
   the request record reads from ``request.state`` (``model``, ``record_params``,
   ``record_prompt``, ``timing``).

What differs between endpoints is a ``GenerationFormat`` (the serving class names it as its
``format_class``), made fresh for each request. It supplies the request side (its prompts as
``Prompt`` values, its own validation, ``max_tokens``, the engine's ``logprobs``, ``best_of``,
the output schema, what the request record keeps as the prompt) and the response side: how
events become a collected choice (``add``, ``collected_choices``), stream chunks
(``opening_chunks``, ``chunks``), and beams become choices (``beam_choice``). Bodies and chunks
are the pydantic models of ``lmaas.protocol.openai`` that the format names (``body_model``,
``chunk_model``); the envelope (id, created, model, usage) is filled in here.

New generation features plug in at these seams instead of copying the run. Tool calls are the
chat format's: its ``prompts`` render the tools into the template, its ``constrain`` adds the
tool-call constraint to the sampling settings, and its ``collected_choices``/``chunks`` turn
the generated text into ``tool_calls`` (with ``finish_reason: "tool_calls"``); new response
fields go into the models once. A job that generates without an HTTP client awaits ``plan``
with a state object of its own, runs ``plan.requests`` on ``plan.engine`` through
``merge_streams``, and hands the events to ``GenerationRun.collect``: it gets the body an HTTP
client would.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from lmaas.config import Limits
from lmaas.engine.client import EngineClient
from lmaas.errors import LmaasError, OverloadedError, ServiceUnavailableError
from lmaas.gateway.auth import Authenticator
from lmaas.gateway.serving import sse
from lmaas.gateway.serving.admission import Ticket, client_deadline
from lmaas.gateway.serving.beam import beam_params, beam_usage, run_beam_searches
from lmaas.gateway.serving.common import (
    RequestTiming,
    ServingBase,
    build_sampling,
    check_schema,
    engine_request_id,
    first_event,
    merge_streams,
    new_generate_requests,
    record_params,
    require_generation,
    resolve_engine,
    seeds_for,
    until_disconnected,
    validate_common,
)
from lmaas.keys import KeyInfo
from lmaas.protocol.engine import (
    BeamParams,
    BeamResult,
    GenerateRequest,
    ModelInfo,
    Priority,
    SamplingParams,
    TokenEvent,
)
from lmaas.protocol.openai import SamplingFields, Usage
from lmaas.telemetry.metrics import Metrics

# A text no token can produce and that JSON writes as itself (see ``text_event``).
_PLACEHOLDER = "lmaas-text-placeholder-5f0c2a"
_PLACEHOLDER_JSON = b'"lmaas-text-placeholder-5f0c2a"'

BodyT = TypeVar("BodyT", bound=SamplingFields)
ChoiceT = TypeVar("ChoiceT", bound=BaseModel)

Merged = AsyncGenerator[tuple[int, TokenEvent], None]


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt to generate from, and what the engine must know about it."""

    prompt: str | list[int]
    parse_special: bool = False  # a rendered chat template holds special tokens
    # With parse_special: spans of the prompt that are text all the same (message content).
    text_spans: tuple[tuple[int, int], ...] = ()
    add_bos: bool = True
    prompt_logprobs: int | None = None  # for echo: the prompt's own logprobs


class GenerationFormat(ABC, Generic[BodyT, ChoiceT]):
    """What one endpoint supplies to the pipeline; one instance per request.

    Choice ``i`` of the response is choice ``i % n`` of prompt ``i // n``.
    """

    id_prefix: str = ""
    body_model: type[BaseModel]  # the non-streaming body: id, created, model, choices, usage
    chunk_model: type[BaseModel]  # a stream chunk: the same envelope, usage only at the end

    def __init__(self, body: BodyT, request_id: str) -> None:
        self.body = body
        self.id = f"{self.id_prefix}{request_id}"
        self.created = 0
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # What every stream chunk but the usage one repeats (set by ``begin``).
        self.chunk_fields: dict[str, Any] = {}

    # --- request side ---------------------------------------------------------------------

    @property
    @abstractmethod
    def max_tokens(self) -> int | None:
        """The generation budget per choice (``None``: up to the model's length limit)."""

    @property
    @abstractmethod
    def logprobs(self) -> int | None:
        """Alternatives per generated token the engine reports (``None``: no logprobs)."""

    @property
    def best_of(self) -> int | None:
        """A beam width the request names besides ``beam_width``."""
        return None

    def validate(self, limits: Limits) -> None:
        """Refuse what this endpoint does not allow (after the checks every endpoint shares)."""

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema the output must follow (``{}``: any JSON object; ``None``: text)."""
        return check_schema(self.body.response_format)

    def constrain(self, sampling: SamplingParams) -> SamplingParams:
        """The sampling settings with any constraint of this format's own (chat: tool calls)."""
        return sampling

    @abstractmethod
    async def prompts(self, info: ModelInfo) -> list[Prompt]:
        """The prompts to generate from, in choice order (awaited: a chat template renders in
        a child process)."""

    @abstractmethod
    def prompt_record(self) -> str:
        """The prompt as a request record keeps it (after ``prompts``)."""

    # --- response side --------------------------------------------------------------------

    def begin(self, created: int) -> None:
        """Output starts: ``created`` is the response's timestamp."""
        self.created = created
        self.chunk_fields = {"id": self.id, "created": created, "model": self.body.model}
        if self.include_usage:
            self.chunk_fields["usage"] = None
        self._text_events: dict[int, tuple[bytes, bytes]] = {}

    def text_choice(self, index: int, text: str) -> dict[str, Any]:
        """The choice of a chunk that carries only ``text`` (no logprobs, no finish)."""
        raise NotImplementedError

    def text_event(self, index: int, text: str) -> bytes:
        """The SSE event of a chunk that carries only ``text``: the hot path of a stream.

        Equal to ``sse.model_event(self.chunk(self.text_choice(index, text)))``, without
        building and validating a model per token: the event is serialized once per choice
        with a placeholder text, and each token's text is written into it (orjson).
        """
        parts = self._text_events.get(index)
        if parts is None:
            event = sse.model_event(self.chunk(self.text_choice(index, _PLACEHOLDER)))
            head, _, tail = event.rpartition(_PLACEHOLDER_JSON)
            parts = self._text_events[index] = (head, tail)
        return parts[0] + orjson.dumps(text) + parts[1]

    @abstractmethod
    def add(self, index: int, event: TokenEvent) -> None:
        """Collect an event of choice ``index`` for the non-streaming body."""

    @abstractmethod
    def collected_choices(self) -> list[ChoiceT]:
        """The choices ``add`` collected, in index order."""

    @abstractmethod
    def beam_choice(self, index: int, beam: BeamResult) -> ChoiceT:
        """One beam of a beam search as choice ``index``."""

    def response(self, choices: list[ChoiceT], usage: Usage) -> BaseModel:
        """The non-streaming body."""
        return self.body_model(
            id=self.id, created=self.created, model=self.body.model, choices=choices, usage=usage
        )

    def opening_chunks(self) -> Sequence[BaseModel]:
        """Chunks a stream starts with, before any event's."""
        return ()

    @abstractmethod
    def chunks(self, index: int, event: TokenEvent) -> Sequence[BaseModel | bytes]:
        """The stream chunks an event of choice ``index`` becomes (maybe none): models, or
        SSE events already encoded (``text_event``)."""

    def chunk(self, choice: dict[str, Any]) -> BaseModel:
        """A stream chunk of one choice, given as a dict of the choice model's fields.

        Validated from a dict: one call per chunk, where a constructor for the chunk, its
        choice and their parts would cost more on every streamed token.
        """
        return self.chunk_model.model_validate({**self.chunk_fields, "choices": [choice]})

    def usage_chunk(self, usage: Usage) -> BaseModel:
        """The last chunk of a stream with ``stream_options.include_usage``."""
        return self.chunk_model(
            id=self.id, created=self.created, model=self.body.model, choices=[], usage=usage
        )

    def beam_response(self, beams: Sequence[Sequence[BeamResult]], usage: Usage) -> BaseModel:
        """The body of a beam search: choice ``i * n + j`` is beam ``j`` of prompt ``i``."""
        n = self.body.n
        choices = [
            self.beam_choice(i * n + j, beam)
            for i, per_prompt in enumerate(beams)
            for j, beam in enumerate(per_prompt)
        ]
        return self.response(choices, usage)


@dataclass(slots=True)
class GenerationPlan:
    """A validated, admitted request: the engine and what to ask it."""

    engine: EngineClient
    requests: list[GenerateRequest]
    prompts: int
    beam: BeamParams | None
    # The admission's reservation: released when the request ends (``GenerationRun`` or the
    # caller, on every path; a ticket dropped unreleased releases itself when collected).
    ticket: Ticket


class GenerationRun:
    """Usage and timing of a sampled request in flight, and its two ways to answer."""

    def __init__(
        self,
        fmt: GenerationFormat[Any, Any],
        prompts: int,
        timing: RequestTiming,
        metrics: Metrics,
        ticket: Ticket | None = None,
    ) -> None:
        self.fmt = fmt
        self.ticket = ticket
        self.n = fmt.body.n
        self.timing = timing
        self.metrics = metrics
        self.prompt_tokens = [0] * prompts
        self.completion_tokens = [0] * (prompts * self.n)
        self.cached_tokens: list[int | None] = [None] * (prompts * self.n)

    def __del__(self) -> None:  # a stream the server never iterated must not hold its slots
        if self.ticket is not None:
            self.ticket.release()

    def _count(self, index: int, event: TokenEvent) -> None:
        self.timing.on_event(event)
        p = index // self.n
        if event.prompt_tokens > self.prompt_tokens[p]:
            self.prompt_tokens[p] = event.prompt_tokens
        if event.queue_time is not None and self.cached_tokens[index] is None:
            self.cached_tokens[index] = event.cached_tokens
        before = self.completion_tokens[index]
        self.completion_tokens[index] = event.completion_tokens
        if self.ticket is not None:
            self.ticket.produced += event.completion_tokens - before

    def usage(self) -> Usage:
        """Each prompt once, every choice's tokens. A prompt's cached tokens are the fewest
        any of its choices found (later choices copy what the first one computed)."""
        n = self.n
        cached = sum(
            min((c or 0 for c in self.cached_tokens[p * n : (p + 1) * n]), default=0)
            for p in range(len(self.prompt_tokens))
        )
        return Usage.of(sum(self.prompt_tokens), sum(self.completion_tokens), cached)

    def _finish(self, *, complete: bool) -> None:
        t = self.timing
        t.prompt_tokens = sum(self.prompt_tokens)
        t.completion_tokens = sum(self.completion_tokens)
        t.max_choice_tokens = max(self.completion_tokens, default=0)
        unfinished = len(self.completion_tokens) - sum(t.finish_reasons.values())
        if not complete and unfinished > 0:  # the client left or the stream failed
            t.finish_reasons["abort"] = t.finish_reasons.get("abort", 0) + unfinished
        t.record(self.metrics)
        if self.ticket is not None:
            self.ticket.queue_time = t.queue_time
            self.ticket.release(t.completion_tokens if complete else None)

    async def collect(self, first: tuple[int, TokenEvent], merged: Merged) -> BaseModel:
        """The whole body, once every choice has finished."""
        fmt = self.fmt
        complete = False
        try:
            item: tuple[int, TokenEvent] | None = first
            while item is not None:
                index, event = item
                self._count(index, event)
                fmt.add(index, event)
                item = await anext(merged, None)
            complete = True
        finally:
            try:
                await merged.aclose()
            finally:  # even when the close is cancelled: the slots must be released
                self._finish(complete=complete)
        return fmt.response(fmt.collected_choices(), self.usage())

    async def stream(self, first: tuple[int, TokenEvent], merged: Merged) -> AsyncIterator[bytes]:
        """Server-sent events; an error after the first byte becomes an error event."""
        fmt = self.fmt
        complete = False
        try:
            for opening in fmt.opening_chunks():
                yield sse.model_event(opening)
            item: tuple[int, TokenEvent] | None = first
            while item is not None:
                index, event = item
                self._count(index, event)
                for chunk in fmt.chunks(index, event):
                    yield chunk if isinstance(chunk, bytes) else sse.model_event(chunk)
                item = await anext(merged, None)
            complete = True
            if fmt.include_usage:
                yield sse.model_event(fmt.usage_chunk(self.usage()))
        except LmaasError as exc:
            self.timing.error = exc.message
            yield sse.event(exc.to_body())
        finally:
            try:
                await merged.aclose()
            finally:  # even when the close is cancelled: the slots must be released
                self._finish(complete=complete)
        yield sse.DONE


def json_response(model: BaseModel) -> Response:
    """A non-streaming body, serialized by its pydantic model."""
    return Response(model.__pydantic_serializer__.to_json(model), media_type="application/json")


class GenerationServing(ServingBase, Generic[BodyT]):
    """The pipeline; an endpoint's serving object names only its ``format_class``."""

    format_class: type[GenerationFormat[Any, Any]]

    def new_format(self, body: BodyT, request_id: str) -> GenerationFormat[BodyT, Any]:
        """The format of one request to this endpoint."""
        return self.format_class(body, request_id)

    async def create(
        self, body: BodyT, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        fmt = self.new_format(body, request_id)
        request.state.deadline = client_deadline(request.headers, stream=bool(body.stream))
        plan = await self.plan(fmt, request_id, key, request.state)
        response: Response | None = None
        try:
            response = await self._run(fmt, plan, request)
            return response
        finally:
            if not isinstance(response, StreamingResponse):
                plan.ticket.release()  # a stream's ends with it (GenerationRun)

    async def _run(
        self, fmt: GenerationFormat[BodyT, Any], plan: GenerationPlan, request: Request
    ) -> Response:
        timing = RequestTiming(model=plan.engine.name)
        request.state.timing = timing
        if plan.beam is not None:
            return await self._beam_search(fmt, plan, request, timing)
        merged = merge_streams([plan.engine.generate(r) for r in plan.requests])
        first = await first_event(request, merged)
        if first is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        fmt.begin(int(time.time()))
        run = GenerationRun(fmt, plan.prompts, timing, self.metrics, plan.ticket)
        if fmt.body.stream:
            return StreamingResponse(
                run.stream(first, merged), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS
            )
        result = await until_disconnected(request, run.collect(first, merged))
        if result is None:
            return Response(status_code=499)
        return json_response(result)

    async def plan(
        self,
        fmt: GenerationFormat[BodyT, Any],
        request_id: str,
        key: KeyInfo | None,
        state: Any,
    ) -> GenerationPlan:
        """Everything up to the engine requests; raises ``LmaasError`` on a refusal.

        ``state`` (``request.state`` for HTTP) receives what the request record reads.
        """
        body = fmt.body
        Authenticator.authorize_model(key, body.model)
        engine = resolve_engine(self.engines, body.model)
        state.model = engine.name
        state.record_params = record_params(body)
        validate_common(body, self.limits, fmt.max_tokens)
        fmt.validate(self.limits)
        beam = beam_params(
            body, self.limits, response_format=body.response_format, best_of=fmt.best_of
        )
        schema = fmt.output_schema()
        await engine.until_ready()  # held while a deployment scales from zero
        info = engine.info
        if info is None:
            raise ServiceUnavailableError(f"model '{engine.name}' is still loading")
        require_generation(self.engines, engine, info)
        prompts = await fmt.prompts(info)
        if self.store_prompts:
            state.record_prompt = fmt.prompt_record()
        sampling = fmt.constrain(build_sampling(body, info, schema))
        per_prompt = beam.width if beam is not None else body.n
        try:
            ticket = self.admission.admit(
                engine,
                sequences=per_prompt * len(prompts),
                max_tokens=fmt.max_tokens,
                tenant=key.id if key is not None else None,
                weight=float(getattr(key, "weight", None) or 1.0),
                rank=Priority(body.priority).rank,
                deadline=getattr(state, "deadline", None),
            )
        except OverloadedError as exc:
            self.metrics.admission_refusals.labels(engine.name, exc.code).inc()
            raise
        requests = _engine_requests(fmt, request_id, prompts, sampling, beam, key)
        return GenerationPlan(engine, requests, len(prompts), beam, ticket)

    async def _beam_search(
        self,
        fmt: GenerationFormat[BodyT, Any],
        plan: GenerationPlan,
        request: Request,
        timing: RequestTiming,
    ) -> Response:
        results = await run_beam_searches(request, plan.engine, plan.requests, timing, self.metrics)
        if results is None:
            return Response(status_code=499)
        fmt.begin(int(time.time()))
        return json_response(fmt.beam_response(results, beam_usage(timing, results)))


def _engine_requests(
    fmt: GenerationFormat[Any, Any],
    request_id: str,
    prompts: list[Prompt],
    sampling: SamplingParams,
    beam: BeamParams | None,
    key: KeyInfo | None,
) -> list[GenerateRequest]:
    """``n`` sequences per prompt (one group each), or one beam search per prompt.

    The worker shares its batch fairly between keys (an open server's requests are one
    tenant), by the key's ``weight`` when keys have one (1 otherwise), and admits a higher
    ``priority`` class first.
    """
    body = fmt.body
    shared: dict[str, Any] = {
        "tenant": key.id if key is not None else None,
        "weight": float(getattr(key, "weight", None) or 1.0),
        "priority": Priority(body.priority),
        "cache_prompt": body.cache_prompt,
        "max_tokens": fmt.max_tokens,
        "stop": body.stop_list(),
        "include_stop_str": body.include_stop_str_in_output,
        "ignore_eos": body.ignore_eos,
        "logprobs": fmt.logprobs,
    }
    if beam is not None:
        return [
            GenerateRequest(
                request_id=engine_request_id(request_id, i),
                prompt=p.prompt,
                parse_special=p.parse_special,
                text_spans=list(p.text_spans),
                add_bos=p.add_bos,
                sampling=SamplingParams(logit_bias=sampling.logit_bias),
                beam=beam,
                **shared,
            )
            for i, p in enumerate(prompts)
        ]
    requests: list[GenerateRequest] = []
    for p in prompts:
        requests += new_generate_requests(
            request_id,
            p.prompt,
            seeds_for(sampling, body.n),
            parse_special=p.parse_special,
            text_spans=list(p.text_spans),
            add_bos=p.add_bos,
            prompt_logprobs=p.prompt_logprobs,
            **shared,
        )
    return requests
