"""POST /v1/completions: one or many prompts, `n` choices each, echo and prompt logprobs."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from lmaas.config import Limits
from lmaas.engine.client import EngineClient
from lmaas.errors import InvalidRequestError, LmaasError, ServiceUnavailableError
from lmaas.gateway.auth import Authenticator
from lmaas.gateway.serving import sse
from lmaas.gateway.serving.beam import beam_params, beam_usage, run_beam_searches
from lmaas.gateway.serving.common import (
    RequestTiming,
    ServingBase,
    build_sampling,
    check_admission,
    check_schema,
    engine_request_id,
    first_event,
    merge_streams,
    new_generate_requests,
    resolve_engine,
    seeds_for,
    record_params,
    until_disconnected,
    validate_common,
)
from lmaas.protocol.engine import (
    BeamParams,
    GenerateRequest,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from lmaas.protocol.openai import CompletionRequest
from lmaas.keys import KeyInfo
from lmaas.telemetry.metrics import Metrics


def normalize_prompts(prompt: Any, limits: Limits) -> list[str | list[int]]:
    if isinstance(prompt, str):
        prompts: list[str | list[int]] = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    else:
        prompts = list(prompt)
    if not prompts:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    if len(prompts) > limits.max_prompts:
        raise InvalidRequestError(
            f"{len(prompts)} prompts given; at most {limits.max_prompts} per request",
            param="prompt",
        )
    for p in prompts:
        if len(p) == 0:
            raise InvalidRequestError("the prompt is empty", param="prompt")
    return prompts


@dataclass(slots=True)
class _Choice:
    """Accumulates one choice's text and logprobs in the OpenAI completions layout."""

    text: str = ""
    finish: str | None = None
    completion_tokens: int = 0
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def add_logprobs(self, entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
        """Append entries whose text starts at ``offset``; returns them as a delta."""
        delta: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for lp in entries:
            top = {text: value for _, text, _, value in lp.top} if lp.logprob is not None else None
            for key, value in (
                ("tokens", lp.token),
                ("token_logprobs", lp.logprob),
                ("top_logprobs", top),
                ("text_offset", offset),
            ):
                delta[key].append(value)
                getattr(self, key).append(value)
            offset += len(lp.token)
        return delta

    def logprobs(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }


class CompletionServing(ServingBase):
    def _validate(self, body: CompletionRequest) -> None:
        validate_common(body, self.limits, body.max_tokens)
        if body.suffix is not None:
            raise InvalidRequestError("suffix is not supported", param="suffix")
        if body.best_of is not None and body.best_of != body.n and not body.use_beam_search:
            raise InvalidRequestError(
                "best_of other than n needs beam search (use_beam_search: true), where it is "
                "the beam width",
                param="best_of",
            )
        if body.use_beam_search and body.echo:
            raise InvalidRequestError("beam search cannot echo the prompt", param="echo")
        if body.max_tokens == 0 and not body.echo:
            raise InvalidRequestError(
                "max_tokens must be at least 1 (0 is allowed only with echo, to score a prompt)",
                param="max_tokens",
            )
        if body.logprobs is not None and body.logprobs > self.limits.max_logprobs:
            raise InvalidRequestError(
                f"logprobs is {body.logprobs}; at most {self.limits.max_logprobs} is allowed",
                param="logprobs",
            )

    async def create(
        self, body: CompletionRequest, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        Authenticator.authorize_model(key, body.model)
        engine = resolve_engine(self.engines, body.model)
        request.state.model = engine.name
        request.state.record_params = record_params(body)
        self._validate(body)
        beam = beam_params(
            body, self.limits, response_format=body.response_format, best_of=body.best_of
        )
        prompts = normalize_prompts(body.prompt, self.limits)
        if self.store_prompts:
            request.state.record_prompt = json.dumps(prompts)
        schema = check_schema(body.response_format)
        info = engine.info
        if info is None:
            raise ServiceUnavailableError(f"model '{engine.name}' is still loading")
        sampling = build_sampling(body, info, schema)
        if beam is not None:
            return await self._create_beams(
                body, request, request_id, engine, prompts, beam, sampling.logit_bias
            )
        check_admission(engine, self.limits, body.n * len(prompts))
        requests: list[GenerateRequest] = []
        for p in prompts:
            # Token-id prompts need their tokens back to echo them as text.
            want_prompt = body.echo and (body.logprobs is not None or not isinstance(p, str))
            requests += new_generate_requests(
                request_id,
                p,
                seeds_for(sampling, body.n),
                max_tokens=body.max_tokens,
                stop=body.stop_list(),
                include_stop_str=body.include_stop_str_in_output,
                ignore_eos=body.ignore_eos,
                logprobs=body.logprobs,
                prompt_logprobs=(body.logprobs or 0) if want_prompt else None,
            )
        timing = RequestTiming(model=engine.name)
        request.state.timing = timing
        merged = merge_streams([engine.generate(r) for r in requests])
        first = await first_event(request, merged)
        if first is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        run = _Run(body, prompts, f"cmpl-{request_id}", int(time.time()), timing, self.metrics)
        if body.stream:
            return StreamingResponse(
                run.stream(first, merged), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS
            )
        result = await until_disconnected(request, run.collect(first, merged))
        if result is None:
            return Response(status_code=499)
        return JSONResponse(result)

    async def _create_beams(
        self,
        body: CompletionRequest,
        request: Request,
        request_id: str,
        engine: EngineClient,
        prompts: list[str | list[int]],
        beam: BeamParams,
        bias: dict[int, float],
    ) -> Response:
        """One beam search per prompt; choice ``i * n + j`` is beam ``j`` of prompt ``i``."""
        check_admission(engine, self.limits, beam.width * len(prompts))
        requests = [
            GenerateRequest(
                request_id=engine_request_id(request_id, i),
                prompt=p,
                max_tokens=body.max_tokens,
                stop=body.stop_list(),
                include_stop_str=body.include_stop_str_in_output,
                ignore_eos=body.ignore_eos,
                logprobs=body.logprobs,
                sampling=SamplingParams(logit_bias=bias),
                beam=beam,
            )
            for i, p in enumerate(prompts)
        ]
        timing = RequestTiming(model=engine.name)
        request.state.timing = timing
        results = await run_beam_searches(request, engine, requests, timing, self.metrics)
        if results is None:
            return Response(status_code=499)
        choices = []
        for i, beams in enumerate(results):
            for j, b in enumerate(beams):
                choice = _Choice()
                if b.logprobs is not None:
                    choice.add_logprobs(b.logprobs, 0)
                choices.append(
                    {
                        "index": i * beam.n + j,
                        "text": b.text,
                        "logprobs": choice.logprobs() if body.logprobs is not None else None,
                        "finish_reason": b.finish_reason.value,
                        "cumulative_logprob": b.cumulative_logprob,
                        "score": b.score,
                    }
                )
        return JSONResponse(
            {
                "id": f"cmpl-{request_id}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.model,
                "choices": choices,
                "usage": beam_usage(timing.prompt_tokens, results),
            }
        )


class _Run:
    """One completions request in flight."""

    def __init__(
        self,
        body: CompletionRequest,
        prompts: list[str | list[int]],
        cid: str,
        created: int,
        timing: RequestTiming,
        metrics: Metrics,
    ) -> None:
        self.body = body
        self.prompts = prompts
        self.cid = cid
        self.created = created
        self.timing = timing
        self.metrics = metrics
        self.choices = [_Choice() for _ in range(len(prompts) * body.n)]
        self.prompt_tokens = [0] * len(prompts)
        self.started = [False] * len(self.choices)

    def _echo(self, i: int, ev: TokenEvent) -> tuple[str, dict[str, Any] | None]:
        """The prompt part of choice ``i`` (text and logprobs), sent once before its output."""
        choice = self.choices[i]
        prompt = self.prompts[i // self.body.n]
        if ev.prompt_logprobs is not None:
            text = (
                prompt
                if isinstance(prompt, str)
                else "".join(lp.token for lp in ev.prompt_logprobs)
            )
            delta = (
                choice.add_logprobs(ev.prompt_logprobs, 0)
                if self.body.logprobs is not None
                else None
            )
            return text, delta
        return (prompt if isinstance(prompt, str) else ""), None

    def _take(self, i: int, ev: TokenEvent) -> tuple[str, dict[str, Any] | None]:
        self.timing.on_event(ev)
        choice = self.choices[i]
        self.prompt_tokens[i // self.body.n] = max(
            self.prompt_tokens[i // self.body.n], ev.prompt_tokens
        )
        text = ""
        delta: dict[str, Any] | None = None
        if not self.started[i]:
            self.started[i] = True
            if self.body.echo:
                text, delta = self._echo(i, ev)
                choice.text += text
        if ev.logprobs and self.body.logprobs is not None:
            more = choice.add_logprobs(ev.logprobs, len(choice.text))
            delta = more if delta is None else {k: delta[k] + more[k] for k in delta}
        choice.text += ev.text
        text += ev.text
        choice.completion_tokens = ev.completion_tokens
        if ev.finish_reason is not None:
            choice.finish = ev.finish_reason.value
        return text, delta

    def _usage(self) -> dict[str, int]:
        prompt = sum(self.prompt_tokens) * 1
        completion = sum(c.completion_tokens for c in self.choices)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _finish_timing(self) -> None:
        t = self.timing
        t.prompt_tokens = sum(self.prompt_tokens)
        t.completion_tokens = sum(c.completion_tokens for c in self.choices)
        t.max_choice_tokens = max((c.completion_tokens for c in self.choices), default=0)
        t.record(self.metrics)

    async def collect(
        self, first: tuple[int, TokenEvent], merged: AsyncGenerator[tuple[int, TokenEvent], None]
    ) -> dict[str, Any]:
        try:
            self._take(*first)
            async for i, ev in merged:
                self._take(i, ev)
        finally:
            await merged.aclose()
            self._finish_timing()
        want_lp = self.body.logprobs is not None
        return {
            "id": self.cid,
            "object": "text_completion",
            "created": self.created,
            "model": self.body.model,
            "choices": [
                {
                    "index": i,
                    "text": c.text,
                    "logprobs": c.logprobs() if want_lp else None,
                    "finish_reason": c.finish,
                }
                for i, c in enumerate(self.choices)
            ],
            "usage": self._usage(),
        }

    async def stream(
        self, first: tuple[int, TokenEvent], merged: AsyncGenerator[tuple[int, TokenEvent], None]
    ) -> AsyncIterator[bytes]:
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        base: dict[str, Any] = {
            "id": self.cid,
            "object": "text_completion",
            "created": self.created,
            "model": self.body.model,
        }
        if include_usage:
            base["usage"] = None
        try:
            item: tuple[int, TokenEvent] | None = first
            while item is not None:
                i, ev = item
                text, delta = self._take(i, ev)
                if text or delta is not None or ev.finish_reason is not None:
                    yield sse.event(
                        {
                            **base,
                            "choices": [
                                {
                                    "index": i,
                                    "text": text,
                                    "logprobs": delta,
                                    "finish_reason": ev.finish_reason.value
                                    if ev.finish_reason
                                    else None,
                                }
                            ],
                        }
                    )
                item = await anext(merged, None)
            if include_usage:
                yield sse.event({**base, "choices": [], "usage": self._usage()})
        except LmaasError as exc:
            self.timing.error = exc.message
            yield sse.event(exc.to_body())
        finally:
            await merged.aclose()
            self._finish_timing()
        yield sse.DONE
