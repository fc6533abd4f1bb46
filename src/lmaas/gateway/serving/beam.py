"""Beam search on /v1/completions and /v1/chat/completions: what a request may ask, and
collecting the beams the worker returns.

Beam search is deterministic: it scores the model's distribution (after ``logit_bias``) and
never samples. So it refuses, with a 400 naming the parameter, anything that would change
that: ``temperature`` other than 0 or 1, ``top_p`` < 1, ``top_k`` > 0, ``min_p`` > 0,
repetition/presence/frequency penalties, a ``response_format`` other than text (a grammar
would need per-beam grammar state), and ``stream`` (beams are only known when the search
ends; a stream would carry nothing until then). ``seed`` is accepted and has no effect.
The search itself (scores, length penalty, early stopping) is defined in
``lmaas.worker.beam``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.requests import Request

from lmaas.config import Limits
from lmaas.engine.client import EngineClient
from lmaas.errors import InvalidRequestError, ServiceUnavailableError
from lmaas.gateway.serving.common import (
    RequestTiming,
    first_event,
    merge_streams,
    until_disconnected,
)
from lmaas.protocol.engine import BeamParams, BeamResult, GenerateRequest, TokenEvent
from lmaas.protocol.openai import ResponseFormat, SamplingFields, Usage
from lmaas.telemetry.metrics import Metrics

DEFAULT_BEAM_WIDTH = 4

# (field, the values beam search accepts, how to say it)
_SAMPLING_DEFAULTS: tuple[tuple[str, tuple[float, ...], str], ...] = (
    ("temperature", (0.0, 1.0), "0 or 1"),
    ("top_p", (1.0,), "1"),
    ("top_k", (-1.0, 0.0), "-1 or 0"),
    ("min_p", (0.0,), "0"),
    ("repetition_penalty", (1.0,), "1"),
    ("presence_penalty", (0.0,), "0"),
    ("frequency_penalty", (0.0,), "0"),
)


def beam_params(
    body: SamplingFields,
    limits: Limits,
    *,
    response_format: ResponseFormat | None,
    best_of: int | None = None,
) -> BeamParams | None:
    """The beam search a request asks for (``None``: it samples), or a 400 naming the field.

    ``best_of`` (completions) is a synonym of ``beam_width``; without either the width is
    ``max(n, 4)``.
    """
    if not body.use_beam_search:
        for name in ("beam_width", "length_penalty", "early_stopping"):
            if getattr(body, name) is not None:
                raise InvalidRequestError(f"{name} needs use_beam_search: true", param=name)
        return None
    width = _width(body, limits, best_of)
    if body.n > width:
        raise InvalidRequestError(
            f"n ({body.n}) exceeds the beam width ({width}); a beam search returns at most "
            "beam_width beams",
            param="n",
        )
    if body.stream:
        raise InvalidRequestError(
            "beam search cannot stream: its beams are known only when the search ends; "
            "send stream: false",
            param="stream",
        )
    if response_format is not None and response_format.type != "text":
        raise InvalidRequestError(
            "beam search cannot be combined with a response_format", param="response_format"
        )
    for name, allowed, said in _SAMPLING_DEFAULTS:
        value = getattr(body, name)
        if value is not None and float(value) not in allowed:
            raise InvalidRequestError(
                f"beam search is deterministic and ignores sampling; {name} must be left out "
                f"or {said}, not {value}",
                param=name,
            )
    return BeamParams(
        width=width,
        n=body.n,
        length_penalty=1.0 if body.length_penalty is None else float(body.length_penalty),
        early_stopping=bool(body.early_stopping),
    )


def _width(body: SamplingFields, limits: Limits, best_of: int | None) -> int:
    if body.beam_width is not None and best_of is not None and body.beam_width != best_of:
        raise InvalidRequestError(
            f"best_of ({best_of}) and beam_width ({body.beam_width}) differ; with beam search "
            "best_of is the beam width, so send one of them",
            param="best_of",
        )
    if body.beam_width is not None:
        width, param = body.beam_width, "beam_width"
    elif best_of is not None:
        width, param = best_of, "best_of"
    else:
        width, param = max(body.n, min(DEFAULT_BEAM_WIDTH, limits.max_beam_width)), "n"
    if width > limits.max_beam_width:
        raise InvalidRequestError(
            f"{param} is {width}; this server allows a beam width of at most "
            f"{limits.max_beam_width}",
            param=param,
        )
    return width


async def run_beam_searches(
    request: Request,
    engine: EngineClient,
    requests: Sequence[GenerateRequest],
    timing: RequestTiming,
    metrics: Metrics,
) -> list[list[BeamResult]] | None:
    """Run the searches (one per prompt); their beams, best first, or None if the client left.

    Refusals and worker failures raise ``LmaasError`` as for any generation.
    """
    merged = merge_streams([engine.generate(r) for r in requests])
    first = await first_event(request, merged)
    if first is None:
        return None
    finals: list[TokenEvent | None] = [None] * len(requests)

    async def drain() -> bool:
        try:
            item: tuple[int, TokenEvent] | None = first
            while item is not None:
                i, event = item
                timing.on_event(event)
                if event.finish_reason is not None:
                    finals[i] = event
                item = await anext(merged, None)
        finally:
            await merged.aclose()
            _record(timing, metrics, finals)
        return True

    if await until_disconnected(request, drain()) is None:
        return None
    out: list[list[BeamResult]] = []
    for event in finals:
        if event is None or event.beams is None:
            raise ServiceUnavailableError("the beam search ended without a result; retry")
        out.append(event.beams)
    return out


def _record(timing: RequestTiming, metrics: Metrics, finals: list[TokenEvent | None]) -> None:
    """Usage as the response reports it: each prompt once, the returned beams' tokens."""
    done = [e for e in finals if e is not None]
    lengths = [len(b.token_ids) for e in done for b in e.beams or ()]
    timing.prompt_tokens = sum(e.prompt_tokens for e in done)
    timing.completion_tokens = sum(lengths)
    timing.max_choice_tokens = max(lengths, default=0)
    if lengths:  # the whole answer arrives at once: first token = last token
        timing.first_token = timing.last_token = time.monotonic()
    timing.record(metrics)


def beam_usage(timing: RequestTiming, beams: Sequence[Sequence[BeamResult]]) -> Usage:
    """Each prompt once, the tokens of the beams returned."""
    return Usage.of(
        timing.prompt_tokens,
        sum(len(b.token_ids) for per_prompt in beams for b in per_prompt),
        timing.cache_hits,
    )
