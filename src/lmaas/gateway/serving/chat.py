"""POST /v1/chat/completions: template, sampling, fan-out over `n`, SSE framing, usage."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

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
from lmaas.gateway.serving.template import render_chat
from lmaas.protocol.engine import GenerateRequest, SamplingParams, TokenEvent, TokenLogprob
from lmaas.protocol.openai import ChatCompletionRequest
from lmaas.keys import KeyInfo


def chat_logprob(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": lp.token_bytes,
        "top_logprobs": [
            {"token": text, "logprob": value, "bytes": raw} for _, text, raw, value in lp.top
        ],
    }


class ChatServing(ServingBase):
    async def create(
        self, body: ChatCompletionRequest, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        Authenticator.authorize_model(key, body.model)
        engine = resolve_engine(self.engines, body.model)
        request.state.model = engine.name
        request.state.record_params = record_params(body)
        max_tokens = body.max_completion_tokens or body.max_tokens
        validate_common(body, self.limits, max_tokens)
        if body.top_logprobs is not None:
            if not body.logprobs:
                raise InvalidRequestError(
                    "top_logprobs requires logprobs to be true", param="top_logprobs"
                )
            if body.top_logprobs > self.limits.max_logprobs:
                raise InvalidRequestError(
                    f"top_logprobs is {body.top_logprobs}; at most "
                    f"{self.limits.max_logprobs} is allowed",
                    param="top_logprobs",
                )
        beam = beam_params(body, self.limits, response_format=body.response_format)
        schema = check_schema(body.response_format)
        info = engine.info
        if info is None:
            raise ServiceUnavailableError(f"model '{engine.name}' is still loading")
        prompt = render_chat(info, body.messages)
        if self.store_prompts:
            request.state.record_prompt = prompt
        sampling = build_sampling(body, info, schema)
        generate_fields: dict[str, Any] = {
            "parse_special": True,
            "add_bos": not (info.bos_token and prompt.startswith(info.bos_token)),
            "max_tokens": max_tokens,
            "stop": body.stop_list(),
            "include_stop_str": body.include_stop_str_in_output,
            "ignore_eos": body.ignore_eos,
            "logprobs": (body.top_logprobs or 0) if body.logprobs else None,
        }
        if beam is not None:
            beam_request = GenerateRequest(
                request_id=engine_request_id(request_id, 0),
                prompt=prompt,
                sampling=SamplingParams(logit_bias=sampling.logit_bias),
                beam=beam,
                **generate_fields,
            )
            return await self._create_beams(body, request, request_id, engine, beam_request)
        check_admission(engine, self.limits, body.n)
        requests = new_generate_requests(
            request_id, prompt, seeds_for(sampling, body.n), **generate_fields
        )
        timing = RequestTiming(model=engine.name)
        request.state.timing = timing
        merged = merge_streams([engine.generate(r) for r in requests])
        first = await first_event(request, merged)
        if first is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        created = int(time.time())
        cid = f"chatcmpl-{request_id}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                self._stream(first, merged, body, cid, created, timing, include_usage),
                media_type=sse.MEDIA_TYPE,
                headers=sse.HEADERS,
            )
        result = await until_disconnected(
            request, self._collect(first, merged, body, cid, created, timing)
        )
        if result is None:
            return Response(status_code=499)
        return JSONResponse(result)

    async def _create_beams(
        self,
        body: ChatCompletionRequest,
        request: Request,
        request_id: str,
        engine: EngineClient,
        beam_request: GenerateRequest,
    ) -> Response:
        assert beam_request.beam is not None
        check_admission(engine, self.limits, beam_request.beam.width)
        timing = RequestTiming(model=engine.name)
        request.state.timing = timing
        results = await run_beam_searches(request, engine, [beam_request], timing, self.metrics)
        if results is None:
            return Response(status_code=499)
        return JSONResponse(
            {
                "id": f"chatcmpl-{request_id}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.model,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": b.text},
                        "logprobs": {"content": [chat_logprob(lp) for lp in b.logprobs or ()]}
                        if body.logprobs
                        else None,
                        "finish_reason": b.finish_reason.value,
                        "cumulative_logprob": b.cumulative_logprob,
                        "score": b.score,
                    }
                    for i, b in enumerate(results[0])
                ],
                "usage": beam_usage(timing.prompt_tokens, results),
            }
        )

    async def _collect(
        self,
        first: tuple[int, TokenEvent],
        merged: AsyncGenerator[tuple[int, TokenEvent], None],
        body: ChatCompletionRequest,
        cid: str,
        created: int,
        timing: RequestTiming,
    ) -> dict[str, Any]:
        n = body.n
        texts = [""] * n
        finish: list[str | None] = [None] * n
        tokens = [0] * n
        logprobs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        prompt_tokens = 0

        def take(i: int, ev: TokenEvent) -> None:
            nonlocal prompt_tokens
            timing.on_event(ev)
            texts[i] += ev.text
            tokens[i] = ev.completion_tokens
            prompt_tokens = max(prompt_tokens, ev.prompt_tokens)
            if ev.logprobs:
                logprobs[i].extend(chat_logprob(lp) for lp in ev.logprobs)
            if ev.finish_reason is not None:
                finish[i] = ev.finish_reason.value

        try:
            take(*first)
            async for i, ev in merged:
                take(i, ev)
        finally:
            await merged.aclose()
            self._finish_timing(timing, prompt_tokens, tokens)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": texts[i]},
                    "logprobs": {"content": logprobs[i]} if body.logprobs else None,
                    "finish_reason": finish[i],
                }
                for i in range(n)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": sum(tokens),
                "total_tokens": prompt_tokens + sum(tokens),
            },
        }

    def _finish_timing(self, timing: RequestTiming, prompt_tokens: int, tokens: list[int]) -> None:
        timing.prompt_tokens = prompt_tokens
        timing.completion_tokens = sum(tokens)
        timing.max_choice_tokens = max(tokens) if tokens else 0
        timing.record(self.metrics)

    async def _stream(
        self,
        first: tuple[int, TokenEvent],
        merged: AsyncGenerator[tuple[int, TokenEvent], None],
        body: ChatCompletionRequest,
        cid: str,
        created: int,
        timing: RequestTiming,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        n = body.n
        tokens = [0] * n
        prompt_tokens = 0
        base: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
        }
        if include_usage:
            base["usage"] = None

        def chunk(i: int, delta: dict[str, Any], finish: str | None, lps: Any = None) -> bytes:
            choice = {"index": i, "delta": delta, "logprobs": lps, "finish_reason": finish}
            return sse.event({**base, "choices": [choice]})

        try:
            for i in range(n):
                yield chunk(i, {"role": "assistant", "content": ""}, None)
            pending: list[tuple[int, TokenEvent]] = [first]
            while True:
                for i, ev in pending:
                    timing.on_event(ev)
                    tokens[i] = ev.completion_tokens
                    prompt_tokens = max(prompt_tokens, ev.prompt_tokens)
                    lps = (
                        {"content": [chat_logprob(lp) for lp in ev.logprobs]}
                        if body.logprobs and ev.logprobs
                        else None
                    )
                    if ev.text or lps is not None:
                        yield chunk(i, {"content": ev.text}, None, lps)
                    if ev.finish_reason is not None:
                        yield chunk(i, {}, ev.finish_reason.value)
                nxt = await anext(merged, None)
                if nxt is None:
                    break
                pending = [nxt]
            if include_usage:
                total = sum(tokens)
                yield sse.event(
                    {
                        **base,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": total,
                            "total_tokens": prompt_tokens + total,
                        },
                    }
                )
        except LmaasError as exc:
            timing.error = exc.message
            yield sse.event(exc.to_body())
        finally:
            await merged.aclose()
            self._finish_timing(timing, prompt_tokens, tokens)
        yield sse.DONE
