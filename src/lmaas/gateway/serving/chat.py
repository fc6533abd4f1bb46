"""POST /v1/chat/completions: the chat format of the generation pipeline (``generation.py``).

The prompt is the model's chat template over the messages, rendered by a ``ChatRenderer``
(``template.py``: in a child process with time and size limits, message content kept from
forging special tokens); a stream opens each choice with
an assistant role delta, carries text (and logprobs) deltas, and closes each choice with an
empty delta that holds its finish reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from lmaas.config import Limits
from lmaas.engine.client import EngineClient
from lmaas.errors import InvalidRequestError
from lmaas.gateway.serving.admission import Admission
from lmaas.gateway.serving.generation import GenerationFormat, GenerationServing, Prompt
from lmaas.gateway.serving.template import ChatRenderer, TemplatePool
from lmaas.protocol.engine import BeamResult, ModelInfo, TokenEvent, TokenLogprob
from lmaas.protocol.openai import (
    AssistantMessage,
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprob,
)
from lmaas.telemetry.metrics import Metrics


def logprob_fields(lp: TokenLogprob) -> dict[str, Any]:
    """A token's logprob entry as ``ChatLogprob`` fields."""
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": lp.token_bytes,
        "top_logprobs": [
            {"token": text, "logprob": value, "bytes": raw} for _, text, raw, value in lp.top
        ],
    }


def chat_logprob(lp: TokenLogprob) -> ChatLogprob:
    # One validation call for the entry and its alternatives: cheaper than a constructor each.
    return ChatLogprob.model_validate(logprob_fields(lp))


class ChatFormat(GenerationFormat[ChatCompletionRequest, ChatChoice]):
    body_model = ChatCompletion
    chunk_model = ChatCompletionChunk
    id_prefix = "chatcmpl-"

    def __init__(
        self, body: ChatCompletionRequest, request_id: str, templates: ChatRenderer
    ) -> None:
        super().__init__(body, request_id)
        self.templates = templates
        self.prompt = ""
        self.texts = [""] * body.n
        self.finish: list[str | None] = [None] * body.n
        self.logprob_lists: list[list[ChatLogprob]] = [[] for _ in range(body.n)]

    @property
    def max_tokens(self) -> int | None:
        return self.body.max_completion_tokens or self.body.max_tokens

    @property
    def logprobs(self) -> int | None:
        return (self.body.top_logprobs or 0) if self.body.logprobs else None

    def validate(self, limits: Limits) -> None:
        top = self.body.top_logprobs
        if top is None:
            return
        if not self.body.logprobs:
            raise InvalidRequestError(
                "top_logprobs requires logprobs to be true", param="top_logprobs"
            )
        if top > limits.max_logprobs:
            raise InvalidRequestError(
                f"top_logprobs is {top}; at most {limits.max_logprobs} is allowed",
                param="top_logprobs",
            )

    async def prompts(self, info: ModelInfo) -> list[Prompt]:
        rendered = await self.templates.render(info, self.body.messages)
        self.prompt = rendered.text
        # The template wrote the BOS itself (not message content that reads like one).
        bos_first = bool(info.bos_token) and self.prompt.startswith(info.bos_token)
        content_first = bool(rendered.text_spans) and rendered.text_spans[0][0] == 0
        add_bos = not (bos_first and not content_first)
        return [
            Prompt(self.prompt, parse_special=True, text_spans=rendered.text_spans, add_bos=add_bos)
        ]

    def prompt_record(self) -> str:
        return self.prompt

    # --- collected body ---

    def add(self, index: int, event: TokenEvent) -> None:
        self.texts[index] += event.text
        if event.logprobs:
            self.logprob_lists[index].extend(chat_logprob(lp) for lp in event.logprobs)
        if event.finish_reason is not None:
            self.finish[index] = event.finish_reason.value

    def collected_choices(self) -> list[ChatChoice]:
        return [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=self.texts[i]),
                logprobs=ChatChoiceLogprobs(content=self.logprob_lists[i])
                if self.body.logprobs
                else None,
                finish_reason=self.finish[i],
            )
            for i in range(self.body.n)
        ]

    def beam_choice(self, index: int, beam: BeamResult) -> ChatChoice:
        logprobs = None
        if self.body.logprobs:
            logprobs = ChatChoiceLogprobs(content=[chat_logprob(lp) for lp in beam.logprobs or ()])
        return ChatChoice(
            index=index,
            message=AssistantMessage(content=beam.text),
            logprobs=logprobs,
            finish_reason=beam.finish_reason.value,
            cumulative_logprob=beam.cumulative_logprob,
            score=beam.score,
        )

    # --- stream ---

    def opening_chunks(self) -> list[BaseModel]:
        return [
            self.chunk({"index": i, "delta": {"role": "assistant", "content": ""}})
            for i in range(self.body.n)
        ]

    def text_choice(self, index: int, text: str) -> dict[str, Any]:
        return {"index": index, "delta": {"content": text}, "logprobs": None}

    def chunks(self, index: int, event: TokenEvent) -> Sequence[BaseModel | bytes]:
        out: list[BaseModel | bytes] = []
        logprobs = None
        if self.body.logprobs and event.logprobs:
            logprobs = {"content": [logprob_fields(lp) for lp in event.logprobs]}
        if logprobs is not None:
            delta = {"content": event.text}
            out.append(self.chunk({"index": index, "delta": delta, "logprobs": logprobs}))
        elif event.text:
            out.append(self.text_event(index, event.text))
        if event.finish_reason is not None:
            finish = event.finish_reason.value
            out.append(self.chunk({"index": index, "delta": {}, "finish_reason": finish}))
        return out


class ChatServing(GenerationServing[ChatCompletionRequest]):
    """The chat pipeline, and the child processes that render chat templates (started on
    first use; ``close`` stops them)."""

    format_class = ChatFormat

    def __init__(
        self,
        engines: dict[str, EngineClient],
        limits: Limits,
        metrics: Metrics,
        *,
        store_prompts: bool = False,
        admission: Admission | None = None,
    ) -> None:
        super().__init__(engines, limits, metrics, store_prompts=store_prompts, admission=admission)
        self.templates = ChatRenderer(
            TemplatePool(
                processes=limits.chat_template_processes,
                timeout=limits.chat_template_timeout,
                max_chars=limits.chat_template_max_chars,
            )
        )

    def new_format(self, body: ChatCompletionRequest, request_id: str) -> ChatFormat:
        return ChatFormat(body, request_id, self.templates)

    async def close(self) -> None:
        """Stop the template renderers."""
        await self.templates.close()
