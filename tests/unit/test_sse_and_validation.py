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
    ],
)
def test_chat_validation_names_the_parameter(body: dict[str, object], param: str) -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert _param_of(ChatCompletionRequest, {**base, **body}) == param


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
