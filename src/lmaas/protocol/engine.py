"""What crosses the gateway <-> worker boundary.

Frames are msgpack maps (never pickle). Requests are validated pydantic models on both sides;
events are small dataclasses because the worker emits one per sequence per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmaas.errors import LmaasError, from_wire


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens or the context limit
    ABORT = "abort"  # client went away or the request was cancelled


class Priority(StrEnum):
    """Scheduling classes: a waiting request of a higher class is admitted first."""

    INTERACTIVE = "interactive"  # HTTP requests, unless they ask for less
    BATCH = "batch"
    BACKGROUND = "background"  # jobs

    @property
    def rank(self) -> int:
        """0 for the highest class."""
        return _PRIORITY_RANKS[self]


_PRIORITY_RANKS = {Priority.INTERACTIVE: 0, Priority.BATCH: 1, Priority.BACKGROUND: 2}


class ToolCallSpec(BaseModel):
    """Output made of tool calls: each ``open`` + one call's JSON + ``close``.

    ``call_schema`` is the JSON schema of one call (``{"name": ..., "arguments": ...}``, one
    member per allowed tool). ``parallel``: one call or more, else exactly one. ``allow_text``
    (``tool_choice: auto``): text instead of calls, as long as it does not start with
    ``open``'s first character (after whitespace). The worker turns this into a grammar
    (llama.cpp) or an automaton (transformers), reusing its JSON-schema conversion.
    """

    model_config = ConfigDict(extra="forbid")

    call_schema: dict[str, Any]
    open: str = "<tool_call>"
    close: str = "</tool_call>"
    parallel: bool = False
    allow_text: bool = False


class SamplingParams(BaseModel):
    """Sampling settings as the engine applies them (already validated by the gateway)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] = Field(default_factory=dict)
    # GBNF grammar the output must follow, or a JSON schema the worker turns into one.
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    tool_calls: ToolCallSpec | None = None  # output that is tool calls (or, maybe, text)

    @property
    def constrained(self) -> bool:
        """Whether the output follows a grammar, a JSON schema or tool calls."""
        return (
            self.grammar is not None or self.json_schema is not None or self.tool_calls is not None
        )


class BeamParams(BaseModel):
    """Beam search instead of sampling (deterministic; see ``lmaas.worker.beam``)."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(ge=1, le=256)
    n: int = Field(default=1, ge=1)  # beams returned, best first
    length_penalty: float = 1.0  # score = cumulative logprob / generated_len ** length_penalty
    early_stopping: bool = False

    @model_validator(mode="after")
    def _n_within_width(self) -> Self:
        if self.n > self.width:
            raise ValueError(f"n ({self.n}) exceeds the beam width ({self.width})")
        return self


class GenerateRequest(BaseModel):
    """One sequence to generate. ``n > 1`` is fanned out by the gateway as several of these."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    prompt: str | list[int]
    # Chat prompts are rendered templates that contain special tokens; plain completions do not.
    parse_special: bool = False
    # With ``parse_special``: character spans ``[start, end)`` of ``prompt`` that are text even
    # though they read as special tokens (message content, see ``gateway/serving/template.py``).
    text_spans: list[tuple[int, int]] = Field(default_factory=list)
    add_bos: bool = True
    max_tokens: int | None = None  # None = up to the model's length limit
    stop: list[str] = Field(default_factory=list)
    include_stop_str: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None  # None = none; k >= 0 = chosen token + k alternatives
    prompt_logprobs: int | None = None  # same, for the prompt tokens (completions echo)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    # The `n` choices of one HTTP request share a group: the worker admits them in one step,
    # so a seeded request sees the same batch shapes (and so the same numerics) every time.
    group: str | None = None
    group_size: int = 1
    # One beam search over `beam.width` sequence slots; its only event is the final one, which
    # carries the `beam.n` best beams.
    beam: BeamParams | None = None
    # Fair sharing in the worker's scheduler: waiting requests are admitted by class, then
    # weighted-fairly across tenants (the API key's id; None: one shared bucket).
    tenant: str | None = Field(default=None, max_length=128)
    weight: float = Field(default=1.0, gt=0, le=1000)
    priority: Priority = Priority.INTERACTIVE
    # Read and leave cached prompt prefixes in the worker's prefix cache (llama-server's name).
    cache_prompt: bool = True

    @model_validator(mode="after")
    def _spans_within_prompt(self) -> Self:
        if not self.text_spans:
            return self
        if not (self.parse_special and isinstance(self.prompt, str)):
            raise ValueError("text_spans need a text prompt with parse_special")
        end = 0
        for start, stop in self.text_spans:
            if not end <= start <= stop <= len(self.prompt):
                raise ValueError("text_spans must be sorted, disjoint and within the prompt")
            end = stop
        return self


@dataclass(slots=True)
class TokenLogprob:
    """The logprob of one token and of its most likely alternatives."""

    token_id: int
    token: str
    token_bytes: list[int]
    logprob: float | None  # None for the first prompt token (nothing predicts it)
    top: list[tuple[int, str, list[int], float]] = field(default_factory=list)

    def to_wire(self) -> list[Any]:
        return [self.token_id, self.token, self.token_bytes, self.logprob, self.top]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> TokenLogprob:
        top = [(int(t[0]), str(t[1]), list(t[2]), float(t[3])) for t in raw[4]]
        return cls(int(raw[0]), str(raw[1]), list(raw[2]), raw[3], top)


@dataclass(slots=True)
class BeamResult:
    """One finished beam of a beam search."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    cumulative_logprob: float  # includes the end-of-generation token's logprob if it ended so
    score: float  # cumulative_logprob / max(len(token_ids), 1) ** length_penalty
    logprobs: list[TokenLogprob] | None = None

    def to_wire(self) -> list[Any]:
        lp = [x.to_wire() for x in self.logprobs] if self.logprobs is not None else None
        return [
            self.token_ids,
            self.text,
            self.finish_reason.value,
            self.cumulative_logprob,
            self.score,
            lp,
        ]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> BeamResult:
        lp = raw[5]
        return cls(
            token_ids=[int(t) for t in raw[0]],
            text=str(raw[1]),
            finish_reason=FinishReason(raw[2]),
            cumulative_logprob=float(raw[3]),
            score=float(raw[4]),
            logprobs=[TokenLogprob.from_wire(x) for x in lp] if lp is not None else None,
        )


@dataclass(slots=True)
class TokenEvent:
    """New output of one request since its previous event."""

    request_id: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_time: float | None = None  # seconds waiting in the worker before first scheduled
    cached_tokens: int = 0  # prompt tokens the prefix cache supplied (with queue_time)
    prompt_logprobs: list[TokenLogprob] | None = None
    error: LmaasError | None = None  # the request failed; raised again in the gateway
    beams: list[BeamResult] | None = None  # the final event of a beam search, best first
    # The final event of a request with logprobs that ended on an end-of-generation token:
    # that token's logprob (it is not output, so it is in neither ``token_ids`` nor
    # ``logprobs``; completions report it as OpenAI and vLLM do).
    stop_logprob: TokenLogprob | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"r": self.request_id, "t": self.text, "i": self.token_ids}
        if self.logprobs is not None:
            wire["lp"] = [lp.to_wire() for lp in self.logprobs]
        if self.finish_reason is not None:
            wire["f"] = self.finish_reason.value
        if self.prompt_tokens:
            wire["pt"] = self.prompt_tokens
        wire["ct"] = self.completion_tokens
        if self.queue_time is not None:
            wire["q"] = self.queue_time
        if self.cached_tokens:
            wire["cp"] = self.cached_tokens
        if self.prompt_logprobs is not None:
            wire["plp"] = [lp.to_wire() for lp in self.prompt_logprobs]
        if self.error is not None:
            wire["e"] = self.error.to_wire()
        if self.beams is not None:
            wire["bm"] = [b.to_wire() for b in self.beams]
        if self.stop_logprob is not None:
            wire["slp"] = self.stop_logprob.to_wire()
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> TokenEvent:
        lp = wire.get("lp")
        plp = wire.get("plp")
        fin = wire.get("f")
        beams = wire.get("bm")
        error = wire.get("e")
        slp = wire.get("slp")
        return cls(
            request_id=wire["r"],
            text=wire.get("t", ""),
            token_ids=list(wire.get("i", ())),
            logprobs=[TokenLogprob.from_wire(x) for x in lp] if lp is not None else None,
            finish_reason=FinishReason(fin) if fin is not None else None,
            prompt_tokens=int(wire.get("pt", 0)),
            completion_tokens=int(wire.get("ct", 0)),
            queue_time=wire.get("q"),
            cached_tokens=int(wire.get("cp", 0)),
            prompt_logprobs=[TokenLogprob.from_wire(x) for x in plp] if plp is not None else None,
            error=from_wire(error) if error is not None else None,
            beams=[BeamResult.from_wire(b) for b in beams] if beams is not None else None,
            stop_logprob=TokenLogprob.from_wire(slp) if slp is not None else None,
        )


class ModelInfo(BaseModel):
    """What a worker tells the gateway about its model once it has loaded it."""

    name: str
    path: str
    n_vocab: int
    n_ctx_train: int
    max_model_len: int
    context_size: int
    max_num_seqs: int
    chat_template: str | None
    bos_token: str
    eos_token: str
    add_bos: bool
    # Their ids (None: the vocabulary has no such token); /tokenizer_info reports them.
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    architecture: str
    n_params: int
    size_bytes: int
    # What the model can do (see ``lmaas.protocol.tasks``) and with which backend.
    backend: str = "llamacpp"
    capabilities: list[str] = Field(default_factory=lambda: ["generate", "score", "tokenize"])
    labels: list[str] | None = None  # a classifier's labels, in output order
    mask_token: str | None = None  # a masked language model's mask token (fill_mask)
    embedding_dim: int | None = None
    # Texts of the tokens that only a special-token parse produces (control tokens): what
    # message content may not turn into tokens (bounded by ``lmaas.worker.prompt``).
    special_tokens: list[str] = Field(default_factory=list)
    # Measured by the worker once loaded (``lmaas.worker.resources``): its own resident memory
    # without its KV cache, and the KV cache's bytes per context token; the resource pool
    # (``lmaas.controller.pool``) counts replicas with them.
    memory_bytes: int | None = None
    kv_bytes_per_token: int | None = None
