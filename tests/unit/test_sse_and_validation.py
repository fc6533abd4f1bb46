"""SSE framing and the translation of validation errors into one named parameter."""

from __future__ import annotations

import json

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from lmaas.gateway.errors import validation_error
from lmaas.gateway.serving import sse
from lmaas.protocol.openai import ChatCompletionRequest, CompletionRequest


def test_event_is_one_data_line_even_with_newlines_in_text() -> None:
    frame = sse.event({"text": "line one\nline two\r\n", "emoji": "é😀"})
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 2
    assert json.loads(frame[6:]) == {"text": "line one\nline two\r\n", "emoji": "é😀"}
    assert sse.DONE == b"data: [DONE]\n\n"


def _param_of(model: type, body: dict[str, object]) -> str | None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)  # type: ignore[attr-defined]
    errors = [{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()]
    return validation_error(RequestValidationError(errors)).param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": "warm"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"n": 0}, "n"),
        # As OpenAI: content for every role but the assistant's, tool_call_id for a tool's,
        # and at most 2048 messages.
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "system", "content": None}]}, "messages.0.content"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages.0.tool_call_id"),
        ({"messages": [{"role": "user", "content": "hi"}] * 2049}, "messages"),
    ],
)
def test_chat_validation_names_the_parameter(body: dict[str, object], param: str) -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert _param_of(ChatCompletionRequest, {**base, **body}) == param


def test_assistant_content_may_be_left_out_and_tool_messages_name_their_call() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant"},
        {"role": "tool", "content": "42", "tool_call_id": "call-1"},
    ]
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": messages * 682})
    assert len(body.messages) == 2046
    assert body.messages[1].content is None and body.messages[1].text() == ""
    assert body.messages[2].tool_call_id == "call-1"


def test_completion_prompt_types() -> None:
    for prompt in ("text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        assert CompletionRequest.model_validate({"model": "m", "prompt": prompt}).prompt == prompt
    assert _param_of(CompletionRequest, {"model": "m", "prompt": 5}) == "prompt"


def test_strict_types_do_not_coerce_strings() -> None:
    assert (
        _param_of(
            ChatCompletionRequest,
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": "5",
            },
        )
        == "max_tokens"
    )
