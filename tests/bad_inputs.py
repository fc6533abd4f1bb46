"""The table of bad requests every server (fake engine or real) must refuse with a clear 4xx.

Each case: (id, path, body, extra headers, expected status, expected `param` or None).
A body given as bytes is sent raw; a dict is sent as JSON. ``{model}`` is filled in.
"""

from __future__ import annotations

import json
from typing import Any

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MSG = [{"role": "user", "content": "Say hi"}]

# Long enough to overflow both the fake (256) and the real model (8192 tokens).
LONG_PROMPT = "hello " * 4500
HUGE_PROMPT = "hello " * 9000


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "{model}", "messages": MSG, "max_tokens": 4, **fields}


def _comp(**fields: Any) -> dict[str, Any]:
    return {"model": "{model}", "prompt": "Once upon a time", "max_tokens": 4, **fields}


Case = tuple[str, str, bytes | dict[str, Any], dict[str, str], int, str | None]

CASES: list[Case] = [
    ("malformed-json", CHAT, b'{"model": "x", "messages": [', {}, 400, None),
    ("body-not-object", CHAT, b"[1, 2, 3]", {}, 400, None),
    ("body-empty", CHAT, b"", {}, 400, None),
    ("wrong-content-type", CHAT, _chat(), {"content-type": "text/plain"}, 415, None),
    (
        "form-content-type",
        COMP,
        _comp(),
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        None,
    ),
    ("temperature-wrong-type", CHAT, _chat(temperature="hot"), {}, 400, "temperature"),
    ("messages-wrong-type", CHAT, _chat(messages="hi"), {}, 400, "messages"),
    ("max-tokens-wrong-type", COMP, _comp(max_tokens="many"), {}, 400, "max_tokens"),
    ("stream-wrong-type", CHAT, _chat(stream="yes"), {}, 400, "stream"),
    ("messages-empty", CHAT, _chat(messages=[]), {}, 400, "messages"),
    ("messages-missing", CHAT, {"model": "{model}"}, {}, 400, "messages"),
    (
        "role-unknown",
        CHAT,
        _chat(messages=[{"role": "wizard", "content": "x"}]),
        {},
        400,
        "messages.0.role",
    ),
    ("prompt-empty", COMP, _comp(prompt=""), {}, 400, "prompt"),
    ("prompt-empty-list", COMP, _comp(prompt=[]), {}, 400, "prompt"),
    ("prompt-token-beyond-vocab", COMP, _comp(prompt=[1, 2, 999_999_999]), {}, 400, "prompt"),
    (
        "prompt-plus-max-tokens-too-long",
        COMP,
        _comp(prompt=LONG_PROMPT, max_tokens=4000),
        {},
        400,
        "max_tokens",
    ),
    (
        "chat-plus-max-tokens-too-long",
        CHAT,
        _chat(messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=4000),
        {},
        400,
        "max_tokens",
    ),
    ("prompt-alone-too-long", COMP, _comp(prompt=HUGE_PROMPT), {}, 400, "prompt"),
    ("temperature-negative", CHAT, _chat(temperature=-0.1), {}, 400, "temperature"),
    ("temperature-above-2", CHAT, _chat(temperature=2.5), {}, 400, "temperature"),
    ("top-p-zero", CHAT, _chat(top_p=0), {}, 400, "top_p"),
    ("top-p-above-1", COMP, _comp(top_p=1.5), {}, 400, "top_p"),
    ("top-k-below-minus-1", CHAT, _chat(top_k=-2), {}, 400, "top_k"),
    ("min-p-above-1", CHAT, _chat(min_p=1.5), {}, 400, "min_p"),
    ("min-p-negative", COMP, _comp(min_p=-0.1), {}, 400, "min_p"),
    ("presence-penalty-range", CHAT, _chat(presence_penalty=2.5), {}, 400, "presence_penalty"),
    ("frequency-penalty-range", CHAT, _chat(frequency_penalty=-3), {}, 400, "frequency_penalty"),
    ("repetition-penalty-zero", CHAT, _chat(repetition_penalty=0), {}, 400, "repetition_penalty"),
    (
        "repetition-penalty-above-2",
        COMP,
        _comp(repetition_penalty=2.5),
        {},
        400,
        "repetition_penalty",
    ),
    ("max-tokens-zero", CHAT, _chat(max_tokens=0), {}, 400, "max_tokens"),
    ("max-tokens-zero-without-echo", COMP, _comp(max_tokens=0), {}, 400, "max_tokens"),
    ("max-tokens-above-limit", CHAT, _chat(max_tokens=1_000_000), {}, 400, "max_tokens"),
    ("n-zero", CHAT, _chat(n=0), {}, 400, "n"),
    ("n-above-limit", CHAT, _chat(n=1000, temperature=1.0), {}, 400, "n"),
    ("n-with-greedy", CHAT, _chat(n=2, temperature=0), {}, 400, "n"),
    ("logit-bias-non-integer-key", CHAT, _chat(logit_bias={"abc": 1}), {}, 400, "logit_bias"),
    ("logit-bias-beyond-vocab", CHAT, _chat(logit_bias={"99999999": 5}), {}, 400, "logit_bias"),
    ("logit-bias-value-range", COMP, _comp(logit_bias={"5": 500}), {}, 400, "logit_bias"),
    (
        "json-schema-invalid",
        CHAT,
        _chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
            }
        ),
        {},
        400,
        "response_format.json_schema.schema",
    ),
    (
        "json-schema-missing",
        CHAT,
        _chat(response_format={"type": "json_schema"}),
        {},
        400,
        "response_format.json_schema",
    ),
    (
        "response-format-unknown",
        CHAT,
        _chat(response_format={"type": "xml"}),
        {},
        400,
        "response_format.type",
    ),
    ("top-logprobs-without-logprobs", CHAT, _chat(top_logprobs=2), {}, 400, "top_logprobs"),
    (
        "top-logprobs-above-limit",
        CHAT,
        _chat(logprobs=True, top_logprobs=50),
        {},
        400,
        "top_logprobs",
    ),
    ("completion-logprobs-above-limit", COMP, _comp(logprobs=50), {}, 400, "logprobs"),
    ("too-many-stops", CHAT, _chat(stop=[f"s{i}" for i in range(20)]), {}, 400, "stop"),
    ("empty-stop", CHAT, _chat(stop=[""]), {}, 400, "stop"),
    (
        "stream-options-without-stream",
        CHAT,
        _chat(stream_options={"include_usage": True}),
        {},
        400,
        "stream_options",
    ),
    ("suffix-unsupported", COMP, _comp(suffix="x"), {}, 400, "suffix"),
    ("unknown-model", CHAT, {**_chat(), "model": "no-such-model"}, {}, 404, "model"),
    (
        "body-too-large",
        CHAT,
        _chat(messages=[{"role": "user", "content": "x" * 3_000_000}]),
        {},
        413,
        None,
    ),
]


def _beam_chat(**fields: Any) -> dict[str, Any]:
    return _chat(use_beam_search=True, **fields)


def _beam_comp(**fields: Any) -> dict[str, Any]:
    return _comp(use_beam_search=True, **fields)


# Beam search (default limits: max_beam_width 8, max_n 8): every refusal names its field.
BEAM_CASES: list[Case] = [
    ("beam-flag-wrong-type", CHAT, _chat(use_beam_search="yes"), {}, 400, "use_beam_search"),
    ("beam-width-zero", CHAT, _beam_chat(beam_width=0), {}, 400, "beam_width"),
    ("beam-width-wrong-type", COMP, _beam_comp(beam_width=2.5), {}, 400, "beam_width"),
    ("beam-width-above-limit", CHAT, _beam_chat(beam_width=9), {}, 400, "beam_width"),
    ("beam-best-of-above-limit", COMP, _beam_comp(best_of=9), {}, 400, "best_of"),
    ("beam-best-of-zero", COMP, _beam_comp(best_of=0), {}, 400, "best_of"),
    (
        "beam-best-of-differs-from-width",
        COMP,
        _beam_comp(best_of=3, beam_width=4),
        {},
        400,
        "best_of",
    ),
    ("beam-n-above-width", CHAT, _beam_chat(beam_width=2, n=3), {}, 400, "n"),
    ("beam-n-above-best-of", COMP, _beam_comp(best_of=2, n=3), {}, 400, "n"),
    ("beam-n-above-width-completions", COMP, _beam_comp(n=8, beam_width=4), {}, 400, "n"),
    ("beam-stream", CHAT, _beam_chat(stream=True), {}, 400, "stream"),
    ("beam-stream-completions", COMP, _beam_comp(stream=True), {}, 400, "stream"),
    ("beam-temperature", CHAT, _beam_chat(temperature=0.7), {}, 400, "temperature"),
    ("beam-top-p", COMP, _beam_comp(top_p=0.9), {}, 400, "top_p"),
    ("beam-top-k", CHAT, _beam_chat(top_k=5), {}, 400, "top_k"),
    ("beam-min-p", COMP, _beam_comp(min_p=0.1), {}, 400, "min_p"),
    (
        "beam-repetition-penalty",
        CHAT,
        _beam_chat(repetition_penalty=1.2),
        {},
        400,
        "repetition_penalty",
    ),
    ("beam-presence-penalty", CHAT, _beam_chat(presence_penalty=0.5), {}, 400, "presence_penalty"),
    (
        "beam-frequency-penalty",
        COMP,
        _beam_comp(frequency_penalty=-0.5),
        {},
        400,
        "frequency_penalty",
    ),
    (
        "beam-json-format",
        CHAT,
        _beam_chat(response_format={"type": "json_object"}),
        {},
        400,
        "response_format",
    ),
    ("beam-echo", COMP, _beam_comp(echo=True), {}, 400, "echo"),
    ("beam-length-penalty-range", CHAT, _beam_chat(length_penalty=50), {}, 400, "length_penalty"),
    (
        "beam-early-stopping-type",
        CHAT,
        _beam_chat(early_stopping="never"),
        {},
        400,
        "early_stopping",
    ),
    ("beam-width-without-beam", CHAT, _chat(beam_width=2), {}, 400, "beam_width"),
    ("length-penalty-without-beam", COMP, _comp(length_penalty=0.5), {}, 400, "length_penalty"),
    ("early-stopping-without-beam", CHAT, _chat(early_stopping=True), {}, 400, "early_stopping"),
    ("best-of-without-beam", COMP, _comp(best_of=3), {}, 400, "best_of"),
    (
        "beam-logit-bias-beyond-vocab",
        CHAT,
        _beam_chat(logit_bias={"99999999": 5}),
        {},
        400,
        "logit_bias",
    ),
]


def encode(body: bytes | dict[str, Any], model: str) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body).replace('"{model}"', json.dumps(model)).encode()


def check_error_envelope(payload: Any) -> dict[str, Any]:
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return dict(err)
