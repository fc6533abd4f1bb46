"""POST /v1/completions: the completions format of the generation pipeline (``generation.py``).

One or many prompts (text or token ids), ``n`` choices each; ``echo`` puts the prompt in front
of each choice's text, with its own logprobs when ``logprobs`` is set (``max_tokens: 0`` with
echo scores a prompt). A choice that ended on the end-of-text token lists that token (with no
text) as its last logprobs entry. A stream chunk carries what an event adds to one choice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from lmaas.config import Limits
from lmaas.errors import InvalidRequestError
from lmaas.gateway.serving.generation import GenerationFormat, GenerationServing, Prompt
from lmaas.protocol.engine import BeamResult, ModelInfo, TokenEvent, TokenLogprob
from lmaas.protocol.openai import (
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
)


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
    started: bool = False
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def add_logprobs(self, entries: list[TokenLogprob], offset: int) -> None:
        """Append entries whose text starts at ``offset``."""
        for lp in entries:
            self.tokens.append(lp.token)
            self.token_logprobs.append(lp.logprob)
            self.top_logprobs.append(
                {text: value for _, text, _, value in lp.top} if lp.logprob is not None else None
            )
            self.text_offset.append(offset)
            offset += len(lp.token)

    def logprobs(self) -> CompletionLogprobs:
        """All entries so far (the lists themselves: a whole echoed prompt can be long, so
        they are handed over without being validated again)."""
        return CompletionLogprobs.model_construct(
            tokens=self.tokens,
            token_logprobs=self.token_logprobs,
            top_logprobs=self.top_logprobs,
            text_offset=self.text_offset,
        )

    def logprobs_since(self, start: int) -> dict[str, list[Any]]:
        """The entries from ``start`` on, as ``CompletionLogprobs`` fields for a chunk."""
        return {
            "tokens": self.tokens[start:],
            "token_logprobs": self.token_logprobs[start:],
            "top_logprobs": self.top_logprobs[start:],
            "text_offset": self.text_offset[start:],
        }


class CompletionFormat(GenerationFormat[CompletionRequest, CompletionChoice]):
    body_model = Completion
    chunk_model = CompletionChunk
    id_prefix = "cmpl-"

    def __init__(self, body: CompletionRequest, request_id: str) -> None:
        super().__init__(body, request_id)
        self.texts: list[str | list[int]] = []
        self.choices: list[_Choice] = []

    @property
    def max_tokens(self) -> int | None:
        return self.body.max_tokens

    @property
    def logprobs(self) -> int | None:
        return self.body.logprobs

    @property
    def best_of(self) -> int | None:
        return self.body.best_of

    def validate(self, limits: Limits) -> None:
        body = self.body
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
        if body.logprobs is not None and body.logprobs > limits.max_logprobs:
            raise InvalidRequestError(
                f"logprobs is {body.logprobs}; at most {limits.max_logprobs} is allowed",
                param="logprobs",
            )
        self.texts = normalize_prompts(body.prompt, limits)

    async def prompts(self, info: ModelInfo) -> list[Prompt]:
        body = self.body
        self.choices = [_Choice() for _ in range(len(self.texts) * body.n)]
        out = []
        for p in self.texts:
            # Token-id prompts need their tokens back to echo them as text.
            want_prompt = body.echo and (body.logprobs is not None or not isinstance(p, str))
            out.append(Prompt(p, prompt_logprobs=(body.logprobs or 0) if want_prompt else None))
        return out

    def prompt_record(self) -> str:
        return json.dumps(self.texts)

    def _take(self, index: int, event: TokenEvent) -> tuple[str, dict[str, list[Any]] | None]:
        """Add an event to choice ``index``: the text it adds (with the echoed prompt before
        the first output) and the logprobs entries it adds, if logprobs were asked for."""
        choice = self.choices[index]
        want_lp = self.body.logprobs is not None
        start = len(choice.tokens)
        added_lp = False
        text = ""
        if not choice.started:
            choice.started = True
            if self.body.echo:
                prompt = self.texts[index // self.body.n]
                plp = event.prompt_logprobs
                if plp is not None:
                    text = prompt if isinstance(prompt, str) else "".join(lp.token for lp in plp)
                    if want_lp:
                        choice.add_logprobs(plp, 0)
                        added_lp = True
                elif isinstance(prompt, str):
                    text = prompt
                choice.text += text
        if event.logprobs and want_lp:
            choice.add_logprobs(event.logprobs, len(choice.text))
            added_lp = True
        choice.text += event.text
        if event.stop_logprob is not None and want_lp:
            # The end-of-text token the model chose: no text, but its logprob is reported (an
            # evaluation harness scoring with max_tokens 1 drops the last entry as the output).
            choice.add_logprobs([event.stop_logprob], len(choice.text))
            added_lp = True
        if event.finish_reason is not None:
            choice.finish = event.finish_reason.value
        return text + event.text, choice.logprobs_since(start) if added_lp else None

    # --- collected body ---

    def add(self, index: int, event: TokenEvent) -> None:
        self._take(index, event)

    def collected_choices(self) -> list[CompletionChoice]:
        want_lp = self.body.logprobs is not None
        return [
            CompletionChoice(
                index=i,
                text=c.text,
                logprobs=c.logprobs() if want_lp else None,
                finish_reason=c.finish,
            )
            for i, c in enumerate(self.choices)
        ]

    def beam_choice(self, index: int, beam: BeamResult) -> CompletionChoice:
        choice = _Choice()
        if beam.logprobs is not None:
            choice.add_logprobs(beam.logprobs, 0)
        return CompletionChoice(
            index=index,
            text=beam.text,
            logprobs=choice.logprobs() if self.body.logprobs is not None else None,
            finish_reason=beam.finish_reason.value,
            cumulative_logprob=beam.cumulative_logprob,
            score=beam.score,
        )

    # --- stream ---

    def text_choice(self, index: int, text: str) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": None}

    def chunks(self, index: int, event: TokenEvent) -> Sequence[BaseModel | bytes]:
        text, logprobs = self._take(index, event)
        if not (text or logprobs is not None or event.finish_reason is not None):
            return ()
        if logprobs is None and event.finish_reason is None:
            return (self.text_event(index, text),)
        finish = event.finish_reason.value if event.finish_reason is not None else None
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return (self.chunk(choice),)


class CompletionServing(GenerationServing[CompletionRequest]):
    format_class = CompletionFormat
