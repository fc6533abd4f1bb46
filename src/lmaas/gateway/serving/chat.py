"""POST /v1/chat/completions: the chat format of the generation pipeline (``generation.py``).

The prompt is the model's chat template over the messages, rendered by a ``ChatRenderer``
(``template.py``: in a child process with time and size limits, message content kept from
forging special tokens); a stream opens each choice with
an assistant role delta, carries text (and logprobs) deltas, and closes each choice with an
empty delta that holds its finish reason.

With tools (``tools.py``), the prompt shows them, the worker constrains the output to calls
(or text, for ``tool_choice: auto``), and ``tool_parse.py`` reads the output back: a choice
that made calls has ``tool_calls`` (or the legacy ``function_call``), no content, and finish
reason ``tool_calls``; a stream carries OpenAI's tool-call deltas.
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
from lmaas.gateway.serving.tool_parse import (
    ToolCallParser,
    parse_all,
    piece_delta,
    tool_finish,
)
from lmaas.gateway.serving.tools import ToolPlan, refuse_with_tools, resolve_tools, tool_spec
from lmaas.protocol.engine import BeamResult, ModelInfo, SamplingParams, TokenEvent, TokenLogprob
from lmaas.protocol.openai import (
    AssistantMessage,
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprob,
)
from lmaas.protocol.tools import FunctionCall, ToolCall
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
        self.tools: ToolPlan | None = None
        # One per choice when the output may be tool calls (set by ``validate``).
        self.parsers: list[ToolCallParser] | None = None
        self.pending_logprobs: list[list[dict[str, Any]]] = [[] for _ in range(body.n)]

    @property
    def max_tokens(self) -> int | None:
        return self.body.max_completion_tokens or self.body.max_tokens

    @property
    def logprobs(self) -> int | None:
        return (self.body.top_logprobs or 0) if self.body.logprobs else None

    def validate(self, limits: Limits) -> None:
        self.tools = resolve_tools(self.body, limits)
        if self.tools is not None and self.tools.active:
            refuse_with_tools(self.body)
            self.parsers = [ToolCallParser() for _ in range(self.body.n)]
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

    def constrain(self, sampling: SamplingParams) -> SamplingParams:
        if self.tools is None or self.parsers is None:
            return sampling
        return sampling.model_copy(update={"tool_calls": tool_spec(self.tools)})

    async def prompts(self, info: ModelInfo) -> list[Prompt]:
        rendered = await self.templates.render(info, self.body.messages, self.tools)
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
                message=message,
                logprobs=ChatChoiceLogprobs(content=self.logprob_lists[i])
                if self.body.logprobs
                else None,
                finish_reason=finish,
            )
            for i in range(self.body.n)
            for message, finish in [self._message(i)]
        ]

    def _message(self, index: int) -> tuple[AssistantMessage, str | None]:
        """Choice ``index``'s message and finish reason: its text, or the calls it made."""
        text, finish = self.texts[index], self.finish[index]
        if self.parsers is None or self.tools is None:
            return AssistantMessage(content=text), finish
        parsed = parse_all(text)
        finish = tool_finish(finish, parsed, self.tools.legacy)
        if not parsed.calls:
            return AssistantMessage(content=text), finish
        made = parsed.calls
        if not made[-1].complete and len(made) > 1:
            made = made[:-1]  # cut by max_tokens: keep the calls whose arguments are whole
        calls = [
            ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
            for c in made
        ]
        if self.tools.legacy:
            return AssistantMessage(content=None, function_call=calls[0].function), finish
        return AssistantMessage(content=None, tool_calls=calls), finish

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
        # With tools the reply may be calls only: its content is left unset, not "".
        delta = {"role": "assistant"} if self.parsers else {"role": "assistant", "content": ""}
        return [self.chunk({"index": i, "delta": delta}) for i in range(self.body.n)]

    def text_choice(self, index: int, text: str) -> dict[str, Any]:
        return {"index": index, "delta": {"content": text}, "logprobs": None}

    def chunks(self, index: int, event: TokenEvent) -> Sequence[BaseModel | bytes]:
        if self.parsers is not None:
            return self._tool_chunks(index, event, self.parsers[index])
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

    def _tool_chunks(
        self, index: int, event: TokenEvent, parser: ToolCallParser
    ) -> list[BaseModel | bytes]:
        """Text or tool-call deltas; logprobs ride on the next chunk that goes out."""
        legacy = self.tools is not None and self.tools.legacy
        pending = self.pending_logprobs[index]
        if self.body.logprobs and event.logprobs:
            pending.extend(logprob_fields(lp) for lp in event.logprobs)
        pieces = parser.feed(event.text)
        if event.finish_reason is not None:
            pieces += parser.finish()
        choices = [{"index": index, "delta": piece_delta(p, legacy)} for p in pieces]
        if event.finish_reason is not None:
            reason = tool_finish(event.finish_reason.value, parser, legacy)
            choices.append({"index": index, "delta": {}, "finish_reason": reason})
        if pending and choices:
            choices[0]["logprobs"] = {"content": list(pending)}
            pending.clear()
        return [self.chunk(choice) for choice in choices]


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
