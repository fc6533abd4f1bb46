"""A generation request as the worker takes it in: tokenized, checked against the model's
limits, with its sampler built (``prepare``), and its state while it runs (``ActiveRequest``).

``prepare`` runs on the IPC reader thread (or the preparer's, for a grammar): it reads the
vocabulary, never the context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmaas.errors import ContextLengthExceededError, InvalidRequestError
from lmaas.protocol.engine import GenerateRequest, TokenLogprob
from lmaas.worker.backends.base import GenerationBackend
from lmaas.worker.beam import BeamSearch, BeamSettings
from lmaas.worker.prompt import tokenize_prompt
from lmaas.worker.scheduler import SchedulerConfig
from lmaas.worker.text import IncrementalDecoder, StopMatcher


@dataclass(slots=True)
class ActiveRequest:
    req: GenerateRequest
    prompt_ids: list[int]
    max_new_tokens: int
    sampler: Any  # None for a beam search, which does not sample
    arrival: float
    decoder: IncrementalDecoder = field(default_factory=IncrementalDecoder)
    stops: StopMatcher = field(default_factory=lambda: StopMatcher([]))
    completion_tokens: int = 0
    queue_time: float | None = None
    queue_time_sent: bool = False
    prompt_logprobs: list[TokenLogprob] | None = None
    cached_tokens: int = 0  # prompt tokens the prefix cache supplied at first admission
    beam_settings: BeamSettings | None = None
    beam: BeamSearch | None = None  # from the end of its prefill (again after a preemption)


def prepare(
    backend: GenerationBackend, config: SchedulerConfig, req: GenerateRequest, now: float
) -> ActiveRequest:
    """Tokenize and validate; raises ``InvalidRequestError`` (or a subclass) with a
    client-facing message. The backend's ``make_sampler`` may refuse the sampling
    settings the same way."""
    b = backend
    if isinstance(req.prompt, str):
        if not req.prompt:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        ids = tokenize_prompt(b, req)
    else:
        ids = list(req.prompt)
        bad = next((t for t in ids if not 0 <= t < b.n_vocab), None)
        if bad is not None:
            raise InvalidRequestError(
                f"token id {bad} is outside the vocabulary (0..{b.n_vocab - 1})",
                param="prompt",
            )
    if not ids:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    limit = b.max_model_len
    if len(ids) >= limit and not (req.max_tokens == 0 and len(ids) <= limit):
        raise ContextLengthExceededError(
            f"the prompt is {len(ids)} tokens; this model's limit is {limit} tokens "
            "for prompt and completion together",
            param="messages" if req.parse_special else "prompt",
        )
    if req.beam is not None:
        max_new = _beam_max_new_tokens(b, config, req, len(ids))
    else:
        max_new = req.max_tokens if req.max_tokens is not None else limit - len(ids)
    if len(ids) + max_new > limit:
        raise ContextLengthExceededError(
            f"prompt ({len(ids)} tokens) + max_tokens ({max_new}) = {len(ids) + max_new} "
            f"exceeds this model's limit of {limit} tokens; lower max_tokens or shorten "
            "the prompt",
            param="max_tokens",
        )
    bad_bias = next((t for t in req.sampling.logit_bias if not 0 <= t < b.n_vocab), None)
    if bad_bias is not None:
        raise InvalidRequestError(
            f"logit_bias token id {bad_bias} is outside the vocabulary (0..{b.n_vocab - 1})",
            param="logit_bias",
        )
    beam_settings = None
    sampler = None
    if req.beam is not None:
        beam_settings = BeamSettings(
            width=req.beam.width,
            n=req.beam.n,
            max_new_tokens=max_new,
            length_penalty=req.beam.length_penalty,
            early_stopping=req.beam.early_stopping,
            stop=tuple(req.stop),
            include_stop_str=req.include_stop_str,
            ignore_eos=req.ignore_eos,
            logit_bias=dict(req.sampling.logit_bias),
        )
    else:
        sampler = b.make_sampler(req.sampling)
    return ActiveRequest(
        req=req,
        prompt_ids=ids,
        max_new_tokens=max_new,
        sampler=sampler,
        arrival=now,
        stops=StopMatcher(req.stop, include_stop=req.include_stop_str),
        beam_settings=beam_settings,
    )


def _beam_max_new_tokens(
    backend: GenerationBackend, config: SchedulerConfig, req: GenerateRequest, prompt_len: int
) -> int:
    """A beam search's token budget: every beam must fit in the KV cache at once."""
    assert req.beam is not None
    width = req.beam.width
    slots = config.max_num_seqs
    if width > slots:
        raise InvalidRequestError(
            f"beam_width {width} exceeds the {slots} sequence slots of this model's worker",
            param="beam_width",
        )
    if req.sampling.constrained:
        raise InvalidRequestError(
            "beam search cannot follow a grammar or JSON schema", param="response_format"
        )
    if req.prompt_logprobs is not None:
        raise InvalidRequestError("beam search does not return prompt logprobs", param="echo")
    room = (config.kv_capacity - prompt_len) // width
    if req.max_tokens is None:
        max_new = min(backend.max_model_len - prompt_len, room)
        if max_new < 1:
            raise ContextLengthExceededError(
                f"the prompt ({prompt_len} tokens) leaves no room for {width} beams",
                param="prompt",
            )
        return max_new
    if req.max_tokens > room:
        raise ContextLengthExceededError(
            f"prompt ({prompt_len} tokens) + beam_width ({width}) x max_tokens "
            f"({req.max_tokens}) exceeds the KV cache of this model's worker; at most "
            f"{max(room, 0)} tokens per beam fit: lower max_tokens or beam_width",
            param="max_tokens",
        )
    return req.max_tokens
