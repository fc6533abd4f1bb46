"""OpenAI-compatible request and response models.

Field constraints here are the fixed ones (OpenAI's ranges); limits an operator configures
(`max_tokens`, `n`, logprobs, stop strings) are checked in ``gateway/serving``.

Text fields are ``Text``: a JSON string may spell a lone UTF-16 surrogate (``"\\ud800"``),
which Python decodes into a string that cannot be encoded as UTF-8 again (for a tokenizer, a
worker frame or a database row), so it is refused here, naming the field. Token ids are
``TokenId``: what a model's vocabulary (int32 in every engine) can hold.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    MISSING,
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from lmaas.protocol.tools import (
    FunctionCall,
    FunctionCallChoice,
    FunctionCallDelta,
    FunctionCallInput,
    FunctionList,
    ToolCall,
    ToolCallDelta,
    ToolCallInput,
    ToolChoice,
    ToolList,
)
from lmaas.protocol.unsupported import IgnoredMetadata, PartType, UnsupportedChatFields

Float = StrictFloat | StrictInt

MAX_TOKEN_ID = 2**31 - 1
MAX_MESSAGES = 2048
# A logit_bias key: a token id in ASCII digits (int() also reads "²", "٣" and 5,000 digits).
_TOKEN_KEY = re.compile(r"-?[0-9]{1,10}")


def valid_unicode(value: str) -> str:
    """``value`` unchanged, or a validation error if it holds a lone UTF-16 surrogate."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PydanticCustomError(
            "unicode_surrogate",
            "the text holds a lone UTF-16 surrogate ({char} at index {index}), which is not "
            "Unicode text; send valid UTF-8",
            {"char": f"\\u{ord(value[exc.start]):04x}", "index": exc.start},
        ) from None
    return value


def valid_token_id(value: int) -> int:
    if not 0 <= value <= MAX_TOKEN_ID:
        shown = str(value) if abs(value) < 10**20 else f"a {len(str(abs(value)))}-digit number"
        raise PydanticCustomError(
            "token_id",
            "token ids are integers from 0 to {max}; got {value}",
            {"max": MAX_TOKEN_ID, "value": shown},
        )
    return value


Text = Annotated[StrictStr, AfterValidator(valid_unicode)]
TokenId = Annotated[StrictInt, AfterValidator(valid_token_id)]


class _Request(BaseModel):
    # Unknown fields are ignored (clients send vendor extras), known ones are typed strictly.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class StreamOptions(_Request):
    include_usage: StrictBool = False


class JsonSchemaFormat(_Request):
    name: Text = "response"
    description: Text | None = None
    schema_: Annotated[dict[str, Any], Field(alias="schema")] = Field(default_factory=dict)
    strict: StrictBool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class TextPart(_Request):
    type: PartType  # "text"; image, audio and file parts are refused by name
    text: Text


class ChatMessage(_Request):
    # ``function``: a result of the legacy ``function_call`` (as ``tool``, named by ``name``).
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # Required for every role but the assistant's, and a tool message names the call it
    # answers, as OpenAI has them (validate_default: a left-out field is checked too).
    content: Annotated[Text | list[TextPart] | None, Field(validate_default=True)] = None
    name: Text | None = None
    tool_call_id: Annotated[Text | None, Field(validate_default=True)] = None
    # An assistant turn's calls (gateway/serving/tools.py renders them into the prompt).
    tool_calls: Annotated[list[ToolCallInput], Field(max_length=MAX_MESSAGES)] | None = None
    function_call: FunctionCallInput | None = None

    @field_validator("content", "tool_call_id")
    @classmethod
    def _required_for_role(cls, value: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        needed = role == "tool" if info.field_name == "tool_call_id" else role != "assistant"
        if value is None and role is not None and needed:
            raise PydanticCustomError(
                "missing",
                "{field} is required in a {role} message",
                {"field": info.field_name, "role": role},
            )
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class SamplingFields(_Request):
    """Generation fields shared by chat and completions (vLLM's extensions included)."""

    model: Text
    temperature: Annotated[Float | None, Field(ge=0.0, le=2.0)] = None
    top_p: Annotated[Float | None, Field(gt=0.0, le=1.0)] = None
    # Engines keep top_k in a C int; any value above the vocabulary size means no cut anyway.
    top_k: Annotated[StrictInt | None, Field(ge=-1, le=MAX_TOKEN_ID)] = None
    min_p: Annotated[Float | None, Field(ge=0.0, le=1.0)] = None
    repetition_penalty: Annotated[Float | None, Field(gt=0.0, le=2.0)] = None
    presence_penalty: Annotated[Float | None, Field(ge=-2.0, le=2.0)] = None
    frequency_penalty: Annotated[Float | None, Field(ge=-2.0, le=2.0)] = None
    stop: Text | list[Text] | None = None
    seed: Annotated[StrictInt | None, Field(ge=-(2**63), le=2**64 - 1)] = None
    # Limits.max_n is at most 128; a bound here too, since choices are laid out before the
    # configured limit is checked.
    n: Annotated[StrictInt, Field(ge=1, le=128)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, Float] | None = None
    user: Text | None = None
    ignore_eos: StrictBool = False
    include_stop_str_in_output: StrictBool = False
    response_format: ResponseFormat | None = None
    # Beam search (an extension, named as in vLLM); rules in gateway/serving/beam.py.
    use_beam_search: StrictBool = False
    beam_width: Annotated[StrictInt | None, Field(ge=1)] = None
    length_penalty: Annotated[Float | None, Field(ge=-10.0, le=10.0)] = None
    early_stopping: StrictBool | None = None
    # Scheduling class (an lmaas extension): a request may lower its own priority so that
    # interactive traffic of every key is admitted before it when the model is busy.
    priority: Literal["interactive", "batch", "background"] = "interactive"
    # Prefix caching (an lmaas extension, named as in llama-server): false keeps this request's
    # prompt out of the worker's prefix cache, both reading cached cells and leaving its own.
    cache_prompt: StrictBool = True

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        for key, bias in value.items():
            if _TOKEN_KEY.fullmatch(key) is None:
                shown = repr(key) if len(key) <= 24 else f"{key[:20]!r}... ({len(key)} characters)"
                raise ValueError(f"logit_bias keys must be token ids (integers), got {shown}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias}")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields, UnsupportedChatFields, IgnoredMetadata):
    # OpenAI's bound; each message adds special tokens to the prompt, and a worker's tokenizer
    # slows down more than linearly with their number (20,000 messages stalled one for 10 s).
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[StrictInt | None, Field(ge=1)] = None
    max_completion_tokens: Annotated[StrictInt | None, Field(ge=1)] = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt | None, Field(ge=0)] = None
    # Tool calling (protocol/tools.py; checked and served by gateway/serving/tools.py).
    tools: ToolList | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: FunctionList | None = None  # the legacy form of tools and tool_choice
    function_call: FunctionCallChoice | None = None


PromptType = Text | list[Text] | list[TokenId] | list[list[TokenId]]


class CompletionRequest(SamplingFields):
    prompt: PromptType
    # 0 is allowed only with echo: scoring a prompt, as evaluation harnesses do.
    max_tokens: Annotated[StrictInt | None, Field(ge=0)] = 16
    echo: StrictBool = False
    logprobs: Annotated[StrictInt | None, Field(ge=0)] = None
    suffix: Text | None = None
    best_of: Annotated[StrictInt | None, Field(ge=1)] = None


# --- responses -------------------------------------------------------------------------
# Generation responses are built from these models (gateway/serving/chat.py, completions.py):
# by their constructors, or (stream chunks, where it is cheaper per token) validated from plain
# dicts, which is why they forbid unknown fields. A field that defaults to MISSING is left out
# of the JSON until it is set, unlike a None, which is sent as null (OpenAI has both kinds).


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptTokensDetails(_Response):
    cached_tokens: int = 0  # prompt tokens whose KV cells came from the prefix cache


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatChoiceLogprobs(_Response):
    content: list[ChatLogprob] | None


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None  # null when the reply is only tool calls
    tool_calls: list[ToolCall] | MISSING = MISSING
    function_call: FunctionCall | MISSING = MISSING  # a call, when the request used functions


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None
    # Beam search only: the beam's summed logprob and its length-penalized score.
    cumulative_logprob: float | MISSING = MISSING
    score: float | MISSING = MISSING


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | MISSING = MISSING


class ChatDelta(_Response):
    """What a stream chunk adds to a choice's message; unset fields are left out."""

    role: Literal["assistant"] | MISSING = MISSING
    content: str | MISSING = MISSING
    tool_calls: list[ToolCallDelta] | MISSING = MISSING
    function_call: FunctionCallDelta | MISSING = MISSING


class ChatChunkChoice(_Response):
    index: int
    delta: ChatDelta
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    # Only with stream_options.include_usage: null on every chunk but the last, which has no
    # choices. (Before `choices`, where it has always been in this server's streams.)
    usage: Usage | MISSING | None = MISSING
    choices: list[ChatChunkChoice]


class CompletionLogprobs(_Response):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None
    # Beam search only: the beam's summed logprob and its length-penalized score.
    cumulative_logprob: float | MISSING = MISSING
    score: float | MISSING = MISSING


class Completion(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | MISSING = MISSING


class CompletionChunk(_Response):
    """A /v1/completions stream chunk (OpenAI names its object ``text_completion`` too)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    usage: Usage | MISSING | None = MISSING  # as in ChatCompletionChunk
    choices: list[CompletionChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lmaas"
    max_model_len: int | None = None
    ready: bool = False
    # Which engine serves it ("llamacpp" or "transformers"); None until a replica has loaded.
    backend: str | None = None
    # What it can do (generate, embed, embed_tokens, classify, score, fill_mask, tokenize) and,
    # for a masked language model, its mask token; None until a replica has loaded.
    capabilities: list[str] | None = None
    mask_token: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail
