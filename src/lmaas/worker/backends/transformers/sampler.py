"""Sampling for the transformers backend, in numpy over one row of raw logits.

It follows llama.cpp's chain order: logit bias, repetition / frequency / presence penalties
over the tokens generated so far, then greedy (temperature 0) or top-k, top-p and min-p on the
softmax, temperature and a draw from a per-request seeded generator. A ``response_format``
automaton (``guides.py``), if any, first masks every token it does not accept next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from outlines_core import Guide

from lmaas.errors import InvalidRequestError
from lmaas.protocol.engine import SamplingParams
from lmaas.worker.backends.transformers.guides import Guides, schema_regex, tool_call_regex

_GREEDY_EPS = 1e-5


@dataclass(slots=True)
class TorchSampler:
    """One sequence's sampling state: its settings, its random generator, what it generated,
    and the automaton its output must follow, if any."""

    params: SamplingParams
    rng: np.random.Generator
    counts: dict[int, int] = field(default_factory=dict)
    bias_ids: npt.NDArray[np.int64] | None = None
    bias_values: npt.NDArray[np.float64] | None = None
    guide: Guide | None = None


def make_sampler(
    params: SamplingParams, n_vocab: int, guides: Guides | None = None
) -> TorchSampler:
    needs_guides = params.json_schema is not None or params.tool_calls is not None
    if params.grammar is not None or (needs_guides and guides is None):
        raise InvalidRequestError(
            "GBNF grammars are served by llama.cpp (GGUF) models only; this model runs on "
            "transformers, which takes response_format json_object or json_schema",
            param="response_format",
        )
    sampler = TorchSampler(params, np.random.default_rng(params.seed))
    if params.logit_bias:
        ids = np.fromiter(params.logit_bias, dtype=np.int64)
        if ids.min() < 0 or ids.max() >= n_vocab:
            raise InvalidRequestError(
                "logit_bias names a token outside the vocabulary", param="logit_bias"
            )
        sampler.bias_ids = ids
        sampler.bias_values = np.fromiter(params.logit_bias.values(), dtype=np.float64)
    if params.json_schema is not None and guides is not None:
        sampler.guide = guides.guide(schema_regex(params.json_schema))
    elif params.tool_calls is not None and guides is not None:
        sampler.guide = guides.guide(tool_call_regex(params.tool_calls))
    return sampler


def _softmax(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    e = np.exp(x - x.max())
    return e / e.sum()  # type: ignore[no-any-return]


def sample(sampler: TorchSampler, logits: npt.NDArray[np.floating[Any]]) -> int:
    """Pick the next token from one row of raw logits and remember it (for the penalties)."""
    p = sampler.params
    x = logits.astype(np.float64)
    if sampler.guide is not None:  # only what the automaton accepts next
        allowed = np.asarray(sampler.guide.get_tokens(), dtype=np.int64)
        masked = np.full_like(x, -np.inf)
        masked[allowed] = x[allowed]
        x = masked
    if sampler.bias_ids is not None and sampler.bias_values is not None:
        x[sampler.bias_ids] += sampler.bias_values
    if sampler.counts and (
        p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
    ):
        ids = np.fromiter(sampler.counts, dtype=np.int64)
        counts = np.fromiter(sampler.counts.values(), dtype=np.float64)
        seen = x[ids]
        seen = np.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
        x[ids] = seen - counts * p.frequency_penalty - p.presence_penalty
    if p.temperature < _GREEDY_EPS:
        token = int(np.argmax(x))
    else:
        k = p.top_k if 0 < p.top_k < len(x) else len(x)
        ids = np.argpartition(x, -k)[-k:] if k < len(x) else np.arange(len(x))
        vals = x[ids]
        order = np.argsort(-vals, kind="stable")
        ids, vals = ids[order], vals[order]
        if p.top_p < 1.0 or p.min_p > 0.0:
            probs = _softmax(vals)
            keep = np.ones(len(ids), dtype=bool)
            if p.top_p < 1.0:  # the smallest prefix whose mass reaches top_p
                keep &= (np.cumsum(probs) - probs) < p.top_p
            if p.min_p > 0.0:
                keep &= probs >= p.min_p * probs[0]
            keep[0] = True
            ids, vals = ids[keep], vals[keep]
        token = int(sampler.rng.choice(ids, p=_softmax(vals / p.temperature)))
    sampler.counts[token] = sampler.counts.get(token, 0) + 1
    if sampler.guide is not None and not sampler.guide.is_finished():
        sampler.guide.advance(token)
    return token
