"""The table of bad requests every server (fake engine or real) must refuse with a clear 4xx.

Each case: (id, path, body, extra headers, expected status, expected `param` or None), and
for ``ADMIN_CASES`` the method. A body given as bytes is sent raw; a dict is sent as JSON
(``json.dumps`` writes a lone surrogate as the escape ``"\\ud800"``, as an attacker would).
``{model}`` is filled in, in bodies and paths.

``HOSTILE_CASES`` are inputs that once crashed a worker or answered 500 (issue 10), each with
its neighbours: other endpoints, other fields, other spellings of the same trick.
"""

from __future__ import annotations

import gzip
import json
from typing import Any, NamedTuple

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


def _part(kind: str, **fields: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": kind, **fields}]}]


# What OpenAI's API has and this server does not serve: a 400 naming the field (issue 14).
UNSUPPORTED_CASES: list[Case] = [
    (
        "image-part",
        CHAT,
        _chat(messages=_part("image_url", image_url={"url": "data:image/png;base64,AA=="})),
        {},
        400,
        "messages.0.content.1.type",
    ),
    (
        "audio-part",
        CHAT,
        _chat(messages=_part("input_audio", input_audio={"data": "AA==", "format": "wav"})),
        {},
        400,
        "messages.0.content.1.type",
    ),
    (
        "file-part",
        CHAT,
        _chat(messages=_part("file", file={"file_id": "file-abc"})),
        {},
        400,
        "messages.0.content.1.type",
    ),
    ("audio-output", CHAT, _chat(audio={"voice": "alloy", "format": "wav"}), {}, 400, "audio"),
    ("audio-modality", CHAT, _chat(modalities=["text", "audio"]), {}, 400, "modalities"),
    (
        "prediction",
        CHAT,
        _chat(prediction={"type": "content", "content": "Hi"}),
        {},
        400,
        "prediction",
    ),
    ("web-search", CHAT, _chat(web_search_options={}), {}, 400, "web_search_options"),
    ("reasoning-effort", CHAT, _chat(reasoning_effort="high"), {}, 400, "reasoning_effort"),
    ("verbosity", CHAT, _chat(verbosity="low"), {}, 400, "verbosity"),
    ("metadata-not-object", CHAT, _chat(metadata=["a"]), {}, 400, "metadata"),
    (
        "unknown-multipart-route",
        "/v1/no-such-route",
        b"--x--\r\n",
        {"content-type": "multipart/form-data; boundary=x"},
        404,
        None,
    ),
]
CASES += UNSUPPORTED_CASES


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


# --- issue 10: inputs that crashed a worker or answered 500, and their neighbours -----------

EMB = "/v1/embeddings"
SURROGATE = "a\ud800b"  # a lone high surrogate, sent as its JSON escape
SURROGATES = {
    "high": SURROGATE,
    "low": "\udc00",
    "reversed-pair": "x\udc00\ud83d",
    "high-at-end": "abc\ud83d",
}
BIG = 2**64
SCHEMA = "response_format.json_schema.schema"


def _with_schema(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


def _nested(depth: int, kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        if kind == "items":
            schema = {"type": "array", "items": schema}
        elif kind == "properties":
            schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
        else:
            schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


# Schemas that asked for grammars that crashed llama.cpp (maxLength >= 20,000, maxItems
# 1,000,000), blocked the worker while it built (an enum of 100,000 strings), or recursed
# until a RecursionError (100+ levels); each refused by the gateway, naming the limit.
HOSTILE_SCHEMAS: dict[str, tuple[Any, str | None]] = {
    "string-max-length-100000": ({"type": "string", "maxLength": 100000}, SCHEMA),
    "string-max-length-20000": ({"type": "string", "maxLength": 20000}, SCHEMA),
    "string-min-length-100000": ({"type": "string", "minLength": 100000}, SCHEMA),
    "string-max-length-infinity": ({"type": "string", "maxLength": float("inf")}, SCHEMA),
    "string-max-length-float": ({"type": "string", "maxLength": 1e7}, SCHEMA),
    "array-max-items-1000000": (
        {"type": "array", "items": {"type": "integer"}, "maxItems": 1000000},
        SCHEMA,
    ),
    "array-min-items-1000000": (
        {"type": "array", "items": {"type": "integer"}, "minItems": 1000000},
        SCHEMA,
    ),
    "object-max-properties-1000000": ({"type": "object", "maxProperties": 1000000}, SCHEMA),
    "enum-100000-strings": ({"enum": [f"v{i}" for i in range(100_000)]}, SCHEMA),
    "enum-2000-numbers": ({"enum": list(range(2000))}, SCHEMA),
    "properties-1000": (
        {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1000)}},
        SCHEMA,
    ),
    "pattern-quantifier-100000": ({"type": "string", "pattern": "^a{100000}$"}, SCHEMA),
    "pattern-quantifier-range-20000": ({"type": "string", "pattern": "^(ab){0,20000}$"}, SCHEMA),
    "pattern-quantifier-20-digits": (
        {"type": "string", "pattern": "^a{1,99999999999999999999}$"},
        SCHEMA,
    ),
    "pattern-groups-1000-deep": (
        {"type": "string", "pattern": "(" * 1000 + "a" + ")" * 1000},
        SCHEMA,
    ),
    "nested-items-100": (_nested(100, "items"), SCHEMA),
    "nested-items-200": (_nested(200, "items"), SCHEMA),
    "nested-properties-100": (_nested(100, "properties"), SCHEMA),
    "nested-any-of-100": (_nested(100, "anyOf"), SCHEMA),
    "nested-const-value-200": ({"const": json.loads("[" * 200 + "]" * 200)}, SCHEMA),
    "description-100k": ({"type": "string", "description": "x" * 100_000}, SCHEMA),
    "ref-remote": ({"$ref": "https://example.com/schema.json"}, SCHEMA),
    "ref-file": ({"$ref": "file:///etc/passwd"}, SCHEMA),
    "enum-lone-surrogate": ({"enum": [SURROGATE]}, SCHEMA),
    "property-name-lone-surrogate": (
        {"type": "object", "properties": {SURROGATE: {"type": "string"}}},
        SCHEMA,
    ),
    "const-lone-surrogate": ({"const": {"k": SURROGATE}}, SCHEMA),
    # No worker frame carries these (msgpack holds 64 bits).
    "const-2-64": ({"const": BIG}, SCHEMA),
    "enum-minus-2-64": ({"enum": [1, -BIG]}, SCHEMA),
    "maximum-2-70": ({"type": "integer", "maximum": 2**70}, SCHEMA),
}

# logit_bias keys int() reads (or chokes on) that are not token ids.
BAD_BIAS_KEYS = {
    "double-minus": "--5",
    "superscript-two": "\u00b2",
    "arabic-indic-three": "\u0663",
    "5000-digits": "9" * 5000,
    "11-digits": "99999999999",
    "plus": "+5",
    "space": " 5",
    "decimal": "5.0",
    "exponent": "1e3",
    "hex": "0x10",
    "empty": "",
    "minus-only": "-",
    "lone-surrogate": "\ud800",
}


def _hostile_generation() -> list[Case]:
    cases: list[Case] = []
    for name, (schema, param) in HOSTILE_SCHEMAS.items():
        fmt = _with_schema(schema)
        cases.append((f"schema-{name}", CHAT, _chat(response_format=fmt), {}, 400, param))
        cases.append(
            (f"schema-{name}-completions", COMP, _comp(response_format=fmt), {}, 400, param)
        )
    for name, key in BAD_BIAS_KEYS.items():
        cases.append(
            (f"logit-bias-key-{name}", CHAT, _chat(logit_bias={key: 1}), {}, 400, "logit_bias")
        )
        cases.append(
            (
                f"logit-bias-key-{name}-completions",
                COMP,
                _comp(logit_bias={key: 1}),
                {},
                400,
                "logit_bias",
            )
        )
    for name, value in {"2-64": BIG, "2-63": 2**63, "2-31": 2**31, "minus-2-64": -BIG}.items():
        for path, make in ((CHAT, _chat), (COMP, _comp)):
            suffix = "" if path == CHAT else "-completions"
            cases.append((f"top-k-{name}{suffix}", path, make(top_k=value), {}, 400, "top_k"))
    for field, label, value in (
        ("n", "2-64", BIG),
        ("n", "10-9", 10**9),  # once laid out as 10**9 choices before the limit was checked
        ("max_tokens", "2-64", BIG),
        ("seed", "2-64", BIG),
        ("seed", "minus-2-64", -BIG - 1),
        ("temperature", "2-64", BIG),
        ("top_p", "2-64", BIG),
        ("presence_penalty", "minus-2-64", -BIG),
    ):
        name = f"{field.replace('_', '-')}-{label}"
        body = {"temperature": 1.0, field: value}
        cases.append((name, CHAT, _chat(**body), {}, 400, field))
        cases.append((f"{name}-completions", COMP, _comp(**body), {}, 400, field))
    cases += [
        (
            "max-completion-tokens-2-64",
            CHAT,
            _chat(max_completion_tokens=BIG),
            {},
            400,
            "max_tokens",
        ),
        (
            "top-logprobs-2-64",
            CHAT,
            _chat(logprobs=True, top_logprobs=BIG),
            {},
            400,
            "top_logprobs",
        ),
        ("logprobs-2-64-completions", COMP, _comp(logprobs=BIG), {}, 400, "logprobs"),
        ("beam-width-2-64", CHAT, _beam_chat(beam_width=BIG), {}, 400, "beam_width"),
        ("beam-best-of-2-64", COMP, _beam_comp(best_of=BIG), {}, 400, "best_of"),
        (
            "beam-length-penalty-2-64",
            CHAT,
            _beam_chat(length_penalty=BIG),
            {},
            400,
            "length_penalty",
        ),
        ("prompt-token-2-64", COMP, _comp(prompt=[1, BIG]), {}, 400, "prompt.1"),
        ("prompt-token-2-63", COMP, _comp(prompt=[2**63]), {}, 400, "prompt.0"),
        ("prompt-token-2-31", COMP, _comp(prompt=[2**31]), {}, 400, "prompt.0"),
        ("prompt-token-negative", COMP, _comp(prompt=[5, -1]), {}, 400, "prompt.1"),
        ("prompt-token-minus-2-64", COMP, _comp(prompt=[-BIG]), {}, 400, "prompt.0"),
        ("prompt-token-lists-2-64", COMP, _comp(prompt=[[1], [2, BIG]]), {}, 400, "prompt.1.1"),
    ]
    return cases


def _hostile_understanding() -> list[Case]:
    model = "{model}"
    cases: list[Case] = [
        ("embeddings-token-2-64", EMB, {"model": model, "input": [1, BIG]}, {}, 400, "input.1"),
        (
            "embeddings-token-lists-2-64",
            EMB,
            {"model": model, "input": [[BIG]]},
            {},
            400,
            "input.0.0",
        ),
        ("embeddings-token-negative", EMB, {"model": model, "input": [-1]}, {}, 400, "input.0"),
        (
            "embeddings-token-2-63",
            EMB,
            {"model": model, "input": [[1, 2**63]]},
            {},
            400,
            "input.0.1",
        ),
        ("detokenize-2-64", "/detokenize", {"model": model, "tokens": [BIG]}, {}, 400, "tokens.0"),
        (
            "detokenize-2-63",
            "/detokenize",
            {"model": model, "tokens": [1, 2**63]},
            {},
            400,
            "tokens.1",
        ),
        (
            "detokenize-negative",
            "/detokenize",
            {"model": model, "tokens": [-1]},
            {},
            400,
            "tokens.0",
        ),
        (
            "detokenize-minus-2-64",
            "/detokenize",
            {"model": model, "tokens": [-BIG]},
            {},
            400,
            "tokens.0",
        ),
    ]
    return cases


def _surrogate_fields(s: str) -> list[tuple[str, str, dict[str, Any], str]]:
    """(name, path, body, param) for every text field of every endpoint, holding ``s``."""
    m = "{model}"
    part = [{"role": "user", "content": [{"type": "text", "text": s}]}]
    return [
        (
            "chat-content",
            CHAT,
            _chat(messages=[{"role": "user", "content": s}]),
            "messages.0.content",
        ),
        ("chat-content-part", CHAT, _chat(messages=part), "messages.0.content.0.text"),
        (
            "chat-system-content",
            CHAT,
            _chat(messages=[{"role": "system", "content": s}, *MSG]),
            "messages.0.content",
        ),
        (
            "chat-name",
            CHAT,
            _chat(messages=[{"role": "user", "content": "x", "name": s}]),
            "messages.0.name",
        ),
        ("chat-stop", CHAT, _chat(stop=s), "stop"),
        ("chat-stop-list", CHAT, _chat(stop=["ok", s]), "stop.1"),
        ("chat-model", CHAT, {**_chat(), "model": s}, "model"),
        ("chat-user", CHAT, _chat(user=s), "user"),
        (
            "chat-schema-name",
            CHAT,
            _chat(
                response_format={"type": "json_schema", "json_schema": {"name": s, "schema": {}}}
            ),
            "response_format.json_schema.name",
        ),
        ("completion-prompt", COMP, _comp(prompt=s), "prompt"),
        ("completion-prompt-list", COMP, _comp(prompt=["ok", s]), "prompt.1"),
        ("completion-stop", COMP, _comp(stop=s), "stop"),
        ("completion-model", COMP, {**_comp(), "model": s}, "model"),
        ("completion-suffix", COMP, _comp(suffix=s), "suffix"),
        ("embeddings-input", EMB, {"model": m, "input": s}, "input"),
        ("embeddings-input-list", EMB, {"model": m, "input": ["ok", s]}, "input.1"),
        ("embeddings-model", EMB, {"model": s, "input": "ok"}, "model"),
        ("classify-input", "/v1/classify", {"model": m, "input": s}, "input"),
        ("classify-input-list", "/v1/classify", {"model": m, "input": ["ok", s]}, "input.1"),
        (
            "classify-labels",
            "/v1/classify",
            {"model": m, "input": "ok", "candidate_labels": ["a", s]},
            "candidate_labels.1",
        ),
        (
            "classify-template",
            "/v1/classify",
            {"model": m, "input": "ok", "candidate_labels": ["a", "b"], "hypothesis_template": s},
            "hypothesis_template",
        ),
        ("classify-model", "/v1/classify", {"model": s, "input": "ok"}, "model"),
        (
            "nli-premise",
            "/v1/nli",
            {"model": m, "input": {"premise": s, "hypothesis": "h"}},
            "input.premise",
        ),
        (
            "nli-hypothesis-list",
            "/v1/nli",
            {"model": m, "input": [{"premise": "p", "hypothesis": s}]},
            "input.0.hypothesis",
        ),
        (
            "nli-model",
            "/v1/nli",
            {"model": s, "input": {"premise": "p", "hypothesis": "h"}},
            "model",
        ),
        ("score-input", "/v1/score", {"model": m, "input": s}, "input"),
        ("score-input-list", "/v1/score", {"model": m, "input": ["ok", s]}, "input.1"),
        (
            "score-pair-prompt",
            "/v1/score",
            {"model": m, "input": {"prompt": s, "continuation": "c"}},
            "input.prompt",
        ),
        (
            "score-pair-continuation",
            "/v1/score",
            {"model": m, "input": [{"prompt": "p", "continuation": s}]},
            "input.0.continuation",
        ),
        ("score-model", "/v1/score", {"model": s, "input": "ok"}, "model"),
        ("tokenize-prompt", "/tokenize", {"model": m, "prompt": s}, "prompt"),
        ("tokenize-model", "/tokenize", {"model": s, "prompt": "ok"}, "model"),
        ("detokenize-model", "/detokenize", {"model": s, "tokens": [1]}, "model"),
    ]


def _hostile_surrogates() -> list[Case]:
    cases: list[Case] = []
    for kind, s in SURROGATES.items():
        fields = _surrogate_fields(s)
        if kind != "high":  # every field with the reported one; the others on a sample
            fields = [
                f
                for f in fields
                if f[0] in ("chat-content", "completion-prompt", "embeddings-input", "chat-model")
            ]
        for name, path, body, param in fields:
            cases.append((f"surrogate-{kind}-{name}", path, body, {}, 400, param))
    return cases


def _deep_schema_body(path: str, depth: int) -> bytes:
    """A request whose schema nests ``depth`` levels (too deep for ``json.dumps`` to write)."""
    schema = '{"items": ' * depth + "{}" + "}" * depth
    fmt = '{"type": "json_schema", "json_schema": {"name": "out", "schema": ' + schema + "}}"
    fields = f'"messages": {json.dumps(MSG)}' if path == CHAT else '"prompt": "x"'
    return ('{"model": "{model}", ' + fields + ', "response_format": ' + fmt + "}").encode()


# Deeper than the JSON reader goes: refused as an unreadable body, before any schema check.
DEEP_BODY_CASES: list[Case] = [
    (f"schema-nested-items-{depth}{suffix}", path, _deep_schema_body(path, depth), {}, 400, None)
    for depth in (2000, 100_000)
    for path, suffix in ((CHAT, ""), (COMP, "-completions"))
]

# --- issue 10, the sweep: every endpoint, every field, the wrong type, range and framing -----
# Each case was first sent to a real server and to the in-process app; those that answered 500
# or stalled a worker were fixed (a 20,000-message chat, a hypothesis_template with braces, NaN
# in a schema), and inputs OpenAI accepts are not here.

CLS, NLI, SCORE, TOK, DETOK = "/v1/classify", "/v1/nli", "/v1/score", "/tokenize", "/detokenize"


def _raw(path: str, extra: str) -> bytes:
    """A body with ``extra`` spelled as raw JSON text (NaN, duplicate keys, huge literals)."""
    head = '"messages": [{"role": "user", "content": "hi"}]' if path == CHAT else '"prompt": "hi"'
    return ('{"model": "{model}", ' + head + ', "max_tokens": 4, ' + extra + "}").encode()


def _schema_raw(path: str, schema: str) -> bytes:
    fmt = '{"type": "json_schema", "json_schema": {"name": "o", "schema": ' + schema + "}}"
    return _raw(path, '"response_format": ' + fmt)


def _msgs(*messages: Any) -> dict[str, Any]:
    return _chat(messages=list(messages))


def _user(content: Any) -> dict[str, Any]:
    return _msgs({"role": "user", "content": content})


def _task(**fields: Any) -> dict[str, Any]:
    return {"model": "{model}", **fields}


# Python's JSON reader takes NaN and Infinity, which JSON has not: each field must refuse them.
NOT_JSON_NUMBERS: list[Case] = [
    ("temperature-nan", CHAT, _raw(CHAT, '"temperature": NaN'), {}, 400, "temperature"),
    ("top-p-nan", CHAT, _raw(CHAT, '"top_p": NaN'), {}, 400, "top_p"),
    ("min-p-nan", CHAT, _raw(CHAT, '"min_p": NaN'), {}, 400, "min_p"),
    (
        "repetition-penalty-nan",
        CHAT,
        _raw(CHAT, '"repetition_penalty": NaN'),
        {},
        400,
        "repetition_penalty",
    ),
    (
        "presence-penalty-nan",
        CHAT,
        _raw(CHAT, '"presence_penalty": NaN'),
        {},
        400,
        "presence_penalty",
    ),
    ("temperature-infinity", CHAT, _raw(CHAT, '"temperature": Infinity'), {}, 400, "temperature"),
    ("top-p-minus-infinity", COMP, _raw(COMP, '"top_p": -Infinity'), {}, 400, "top_p"),
    ("max-tokens-nan", COMP, _raw(COMP, '"max_tokens": NaN'), {}, 400, "max_tokens"),
    ("n-infinity", CHAT, _raw(CHAT, '"n": Infinity'), {}, 400, "n"),
    ("seed-nan", CHAT, _raw(CHAT, '"seed": NaN'), {}, 400, "seed"),
    ("logit-bias-value-nan", CHAT, _raw(CHAT, '"logit_bias": {"5": NaN}'), {}, 400, "logit_bias"),
    (
        "logit-bias-value-minus-infinity",
        COMP,
        _raw(COMP, '"logit_bias": {"5": -Infinity}'),
        {},
        400,
        "logit_bias",
    ),
    (
        "beam-length-penalty-nan",
        CHAT,
        _raw(CHAT, '"use_beam_search": true, "length_penalty": NaN'),
        {},
        400,
        "length_penalty",
    ),
    (
        "schema-maximum-nan",
        CHAT,
        _schema_raw(CHAT, '{"type": "number", "maximum": NaN}'),
        {},
        400,
        SCHEMA,
    ),
    ("schema-const-infinity", CHAT, _schema_raw(CHAT, '{"const": Infinity}'), {}, 400, SCHEMA),
    ("schema-enum-nan-completions", COMP, _schema_raw(COMP, '{"enum": [1, NaN]}'), {}, 400, SCHEMA),
    # 1e400 reads as infinity; 5,000 digits are past what Python turns into an int.
    ("temperature-1e400", CHAT, _raw(CHAT, '"temperature": 1e400'), {}, 400, "temperature"),
    ("top-k-exponent", COMP, _raw(COMP, '"top_k": 1e10'), {}, 400, "top_k"),
    ("max-tokens-5000-digits", CHAT, _raw(CHAT, '"max_tokens": ' + "9" * 5000), {}, 400, None),
]

# What is not one JSON object in UTF-8, or not sent as application/json.
FRAMING: list[Case] = [
    ("trailing-garbage", CHAT, _raw(CHAT, '"n": 1') + b"garbage", {}, 400, None),
    ("two-json-objects", COMP, _raw(COMP, '"n": 1') + b' {"a": 1}', {}, 400, None),
    ("single-quotes", CHAT, b"{'model': 'x', 'messages': []}", {}, 400, None),
    ("json-comment", COMP, b'{"model": "{model}", /* c */ "prompt": "x"}', {}, 400, None),
    (
        "non-utf8-bytes",
        CHAT,
        b'{"model": "{model}", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        {},
        400,
        None,
    ),
    (
        "latin1-body",
        COMP,
        '{"model": "{model}", "prompt": "café"}'.encode("latin-1"),
        {},
        400,
        None,
    ),
    ("body-null", CHAT, b"null", {}, 400, None),
    ("body-string", COMP, b'"hello"', {}, 400, None),
    ("body-number", EMB, b"42", {}, 400, None),
    ("body-whitespace", CHAT, b"  \n ", {}, 400, None),
    # The last of duplicate keys wins, and is checked like any other value.
    ("duplicate-key-last-invalid", CHAT, _raw(CHAT, '"max_tokens": 0'), {}, 400, "max_tokens"),
    ("duplicate-messages-last-empty", CHAT, _raw(CHAT, '"messages": []'), {}, 400, "messages"),
    (
        "gzip-body",
        CHAT,
        gzip.compress(json.dumps(_chat()).encode()),
        {"content-encoding": "gzip"},
        400,
        None,
    ),
    ("content-type-empty", CHAT, _chat(), {"content-type": ""}, 415, None),
    (
        "content-type-multipart",
        EMB,
        _task(input="x"),
        {"content-type": "multipart/form-data; boundary=x"},
        415,
        None,
    ),
    (
        "content-type-json-patch",
        COMP,
        _comp(),
        {"content-type": "application/json-patch+json"},
        415,
        None,
    ),
    ("content-type-text-json", TOK, _task(prompt="x"), {"content-type": "text/json"}, 415, None),
    (
        "content-type-octet-stream",
        DETOK,
        _task(tokens=[1]),
        {"content-type": "application/octet-stream"},
        415,
        None,
    ),
]


def _model_cases() -> list[Case]:
    wrong_type: list[tuple[str, str, dict[str, Any]]] = [
        ("null", CHAT, {**_chat(), "model": None}),
        ("missing", COMP, {"prompt": "x"}),
        ("number", CHAT, {**_chat(), "model": 5}),
        ("list", COMP, {**_comp(), "model": ["{model}"]}),
        ("object", EMB, {"model": {"name": "x"}, "input": "x"}),
    ]
    unknown: list[tuple[str, str, dict[str, Any]]] = [
        ("very-long", CHAT, {**_chat(), "model": "m" * 100_000}),
        ("path-traversal", COMP, {**_comp(), "model": "../../../etc/passwd"}),
        ("fullwidth", CHAT, {**_chat(), "model": "\uff46\uff41\uff4b\uff45"}),  # "fake", fullwidth
        ("empty", COMP, {**_comp(), "model": ""}),
        # "{model}:..." is the served model's name followed by the rest (see ``encode``).
        ("version-20-digits", CHAT, {**_chat(), "model": "{model}:99999999999999999999"}),
        ("version-zero", CHAT, {**_chat(), "model": "{model}:0"}),
        ("version-negative", COMP, {**_comp(), "model": "{model}:-1"}),
        ("alias-dot-dot", CHAT, {**_chat(), "model": "{model}:.."}),
        ("colon-only", COMP, {**_comp(), "model": ":"}),
        ("name-then-nul", CHAT, {**_chat(), "model": "{model}\u0000"}),
        ("name-then-space", EMB, {"model": "{model} ", "input": "x"}),
        ("url", COMP, {**_comp(), "model": "https://example.com/model.gguf"}),
        ("rtl-override", CLS, {"model": "\u202efake", "input": "x"}),
    ]
    return [(f"model-{n}", p, b, {}, 400, "model") for n, p, b in wrong_type] + [
        (f"model-{n}", p, b, {}, 404, "model") for n, p, b in unknown
    ]


def _tools(*names: str) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": n}} for n in names]


def _named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


# Tool calling (issue 14): each refusal names the field.
TOOL_CASES: list[Case] = [
    (
        "tool-choice-unknown",
        CHAT,
        _chat(tools=_tools("f"), tool_choice=_named("g")),
        {},
        400,
        "tool_choice",
    ),
    ("tool-choice-without-tools", CHAT, _chat(tool_choice="required"), {}, 400, "tool_choice"),
    (
        "tool-choice-bad-word",
        CHAT,
        _chat(tools=_tools("f"), tool_choice="always"),
        {},
        400,
        "tool_choice",
    ),
    ("tool-name-bad", CHAT, _chat(tools=_tools("has space")), {}, 400, "tools.0.function.name"),
    ("tool-names-twice", CHAT, _chat(tools=_tools("f", "f")), {}, 400, "tools.1.function.name"),
    (
        "tool-type-unknown",
        CHAT,
        _chat(tools=[{"type": "code", "function": {"name": "f"}}]),
        {},
        400,
        "tools.0.type",
    ),
    (
        "tool-parameters-not-object",
        CHAT,
        _chat(
            tools=[
                {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
            ]
        ),
        {},
        400,
        "tools.0.function.parameters",
    ),
    (
        "tool-parameters-too-long",
        CHAT,
        _chat(
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {
                            "type": "object",
                            "properties": {"s": {"type": "string", "maxLength": 10**6}},
                        },
                    },
                }
            ]
        ),
        {},
        400,
        "tools.0.function.parameters",
    ),
    (
        "tools-and-functions",
        CHAT,
        _chat(tools=_tools("f"), functions=[{"name": "f"}]),
        {},
        400,
        "functions",
    ),
    (
        "function-call-unknown",
        CHAT,
        _chat(functions=[{"name": "f"}], function_call={"name": "g"}),
        {},
        400,
        "function_call",
    ),
    (
        "tools-with-beam",
        CHAT,
        _chat(tools=_tools("f"), use_beam_search=True),
        {},
        400,
        "use_beam_search",
    ),
    (
        "tools-with-json",
        CHAT,
        _chat(tools=_tools("f"), response_format={"type": "json_object"}),
        {},
        400,
        "response_format",
    ),
]
CASES += TOOL_CASES

TOOL = {"role": "tool", "content": "42", "tool_call_id": "call-1"}
MESSAGE_CASES: list[Case] = [
    ("messages-null", CHAT, _chat(messages=None), {}, 400, "messages"),
    ("messages-object", CHAT, _chat(messages=MSG[0]), {}, 400, "messages"),
    ("message-string", CHAT, _msgs("hi"), {}, 400, "messages.0"),
    ("role-missing", CHAT, _msgs({"content": "hi"}), {}, 400, "messages.0.role"),
    ("role-null", CHAT, _msgs({"role": None, "content": "hi"}), {}, 400, "messages.0.role"),
    ("role-upper-case", CHAT, _msgs({"role": "USER", "content": "hi"}), {}, 400, "messages.0.role"),
    (
        "function-message-content-missing",
        CHAT,
        _msgs(*MSG, {"role": "function", "name": "f"}),
        {},
        400,
        "messages.1.content",
    ),
    ("content-number", CHAT, _user(5), {}, 400, "messages.0.content"),
    ("content-object", CHAT, _user({"type": "text", "text": "x"}), {}, 400, "messages.0.content"),
    ("content-bool", CHAT, _user(True), {}, 400, "messages.0.content"),
    # OpenAI requires content for every role but the assistant's, and a tool_call_id.
    ("content-missing", CHAT, _msgs({"role": "user"}), {}, 400, "messages.0.content"),
    ("content-null", CHAT, _user(None), {}, 400, "messages.0.content"),
    (
        "system-content-missing",
        CHAT,
        _msgs({"role": "system"}, *MSG),
        {},
        400,
        "messages.0.content",
    ),
    (
        "tool-message-without-id",
        CHAT,
        _msgs(*MSG, {"role": "tool", "content": "42"}),
        {},
        400,
        "messages.1.tool_call_id",
    ),
    (
        "tool-message-content-null",
        CHAT,
        _msgs(*MSG, {**TOOL, "content": None}),
        {},
        400,
        "messages.1.content",
    ),
    (
        "tool-call-id-number",
        CHAT,
        _msgs(*MSG, {**TOOL, "tool_call_id": 7}),
        {},
        400,
        "messages.1.tool_call_id",
    ),
    (
        "name-number",
        CHAT,
        _msgs({"role": "user", "content": "x", "name": 5}),
        {},
        400,
        "messages.0.name",
    ),
    (
        "content-part-image",
        CHAT,
        _user([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]),
        {},
        400,
        "messages.0.content.0.type",
    ),
    (
        "content-part-unknown-type",
        CHAT,
        _user([{"type": "video", "text": "x"}]),
        {},
        400,
        "messages.0.content.0.type",
    ),
    ("content-part-no-type", CHAT, _user([{"text": "x"}]), {}, 400, "messages.0.content.0.type"),
    ("content-part-no-text", CHAT, _user([{"type": "text"}]), {}, 400, "messages.0.content.0.text"),
    (
        "content-part-text-number",
        CHAT,
        _user([{"type": "text", "text": 5}]),
        {},
        400,
        "messages.0.content",
    ),
    ("content-part-bare-string", CHAT, _user(["x"]), {}, 400, "messages.0.content"),
    # OpenAI's bound (2048). 20,000 messages once kept a worker's tokenizer busy past its
    # health pings, and the worker was killed.
    ("messages-2049", CHAT, _chat(messages=MSG * 2049), {}, 400, "messages"),
    ("messages-20000", CHAT, _chat(messages=MSG * 20_000), {}, 400, "messages"),
]


def _field_cases() -> list[Case]:
    """A wrong type or range for every sampling field (chat ``_chat``, completions ``_comp``)."""
    wrong: list[tuple[str, Any, str, Any]] = [
        # (name, body maker, field, value); the field is the param
        ("max-tokens-float", _chat, "max_tokens", 4.5),
        ("max-tokens-integral-float", _comp, "max_tokens", 4.0),
        ("max-tokens-bool", _comp, "max_tokens", True),
        ("max-tokens-negative", _chat, "max_tokens", -1),
        ("max-tokens-negative-completions", _comp, "max_tokens", -5),
        ("max-completion-tokens-zero", _chat, "max_completion_tokens", 0),
        ("max-completion-tokens-string", _chat, "max_completion_tokens", "4"),
        ("n-negative", _comp, "n", -1),
        ("n-float", _chat, "n", 1.5),
        ("n-bool", _chat, "n", True),
        ("n-string", _comp, "n", "2"),
        ("temperature-list", _chat, "temperature", [1]),
        ("temperature-object", _comp, "temperature", {"value": 1}),
        ("temperature-bool", _chat, "temperature", True),
        ("temperature-numeric-string", _comp, "temperature", "0.5"),
        ("top-p-negative", _chat, "top_p", -0.5),
        ("top-p-string", _chat, "top_p", "high"),
        ("top-k-float", _chat, "top_k", 2.5),
        ("top-k-bool", _comp, "top_k", False),
        ("seed-float", _chat, "seed", 1.5),
        ("seed-string", _comp, "seed", "42"),
        ("seed-bool", _chat, "seed", True),
        ("presence-penalty-string", _comp, "presence_penalty", "a"),
        ("frequency-penalty-above-2-completions", _comp, "frequency_penalty", 2.01),
        ("repetition-penalty-negative", _chat, "repetition_penalty", -1),
        ("chat-logprobs-int", _chat, "logprobs", 5),
        ("chat-logprobs-string", _chat, "logprobs", "true"),
        ("completion-logprobs-bool", _comp, "logprobs", True),
        ("completion-logprobs-negative", _comp, "logprobs", -1),
        ("echo-string", _comp, "echo", "yes"),
        ("stop-number", _chat, "stop", 5),
        ("stop-list-of-numbers", _comp, "stop", [1, 2]),
        ("stop-object", _chat, "stop", {"a": "b"}),
        ("stop-nested-list", _chat, "stop", [["a"]]),
        ("stop-1000-strings", _comp, "stop", [f"s{i}" for i in range(1000)]),
        ("stop-empty-string", _comp, "stop", ""),
        ("stop-empty-in-list-completions", _comp, "stop", ["a", ""]),
        ("stream-int", _comp, "stream", 1),
        ("logit-bias-list", _chat, "logit_bias", [[5, 1]]),
        ("logit-bias-value-below-range", _comp, "logit_bias", {"5": -100.5}),
        ("logit-bias-negative-token", _chat, "logit_bias", {"-1": 5}),
        ("logit-bias-token-2-31", _chat, "logit_bias", {"2147483648": 5}),
        ("user-number", _chat, "user", 5),
        ("ignore-eos-string", _comp, "ignore_eos", "yes"),
        ("priority-unknown", _chat, "priority", "urgent"),
        ("priority-number", _comp, "priority", 1),
    ]
    cases: list[Case] = [
        (name, CHAT if make is _chat else COMP, make(**{field: value}), {}, 400, field)
        for name, make, field, value in wrong
    ]
    cases += [
        (
            "max-completion-tokens-above-limit",
            CHAT,
            _chat(max_completion_tokens=1_000_000),
            {},
            400,
            "max_tokens",
        ),
        ("logit-bias-value-string", CHAT, _chat(logit_bias={"5": "high"}), {}, 400, "logit_bias.5"),
        (
            "top-logprobs-negative",
            CHAT,
            _chat(logprobs=True, top_logprobs=-1),
            {},
            400,
            "top_logprobs",
        ),
        (
            "top-logprobs-float",
            CHAT,
            _chat(logprobs=True, top_logprobs=1.5),
            {},
            400,
            "top_logprobs",
        ),
        (
            "echo-logprobs-above-limit",
            COMP,
            _comp(echo=True, logprobs=50, max_tokens=0),
            {},
            400,
            "logprobs",
        ),
        (
            "stream-options-string",
            CHAT,
            _chat(stream=True, stream_options="usage"),
            {},
            400,
            "stream_options",
        ),
        (
            "stream-options-include-usage-string",
            CHAT,
            _chat(stream=True, stream_options={"include_usage": "yes"}),
            {},
            400,
            "stream_options.include_usage",
        ),
        (
            "stream-options-stream-false",
            COMP,
            _comp(stream=False, stream_options={"include_usage": True}),
            {},
            400,
            "stream_options",
        ),
        (
            "stream-null-with-options",
            CHAT,
            _chat(stream=None, stream_options={"include_usage": True}),
            {},
            400,
            "stream",
        ),
    ]
    return cases


def _format_cases() -> list[Case]:
    rf = "response_format"
    shapes: list[tuple[str, Any, str]] = [
        ("string", "json", rf),
        ("type-missing", {"json_schema": {"name": "x", "schema": {}}}, f"{rf}.type"),
        ("type-null", {"type": None}, f"{rf}.type"),
        ("type-upper-case", {"type": "JSON_OBJECT"}, f"{rf}.type"),
        ("json-schema-string", {"type": "json_schema", "json_schema": "{}"}, f"{rf}.json_schema"),
        (
            "schema-list",
            {"type": "json_schema", "json_schema": {"name": "x", "schema": []}},
            SCHEMA,
        ),
        (
            "schema-json-text",
            {"type": "json_schema", "json_schema": {"name": "x", "schema": '{"type": "object"}'}},
            SCHEMA,
        ),
        (
            "schema-false",
            {"type": "json_schema", "json_schema": {"name": "x", "schema": False}},
            SCHEMA,
        ),
        (
            "strict-string",
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}},
            f"{rf}.json_schema.strict",
        ),
    ]
    schemas: list[tuple[str, Any]] = [
        ("pattern-invalid-regex", {"type": "string", "pattern": "(ab"}),
        ("pattern-not-string", {"type": "string", "pattern": 5}),
        ("type-list-with-number", {"type": ["string", 5]}),
        ("required-string", {"type": "object", "required": "a"}),
        ("properties-list", {"type": "object", "properties": [{"a": {}}]}),
        ("max-length-negative", {"type": "string", "maxLength": -1}),
        ("multiple-of-zero", {"type": "number", "multipleOf": 0}),
    ]
    cases: list[Case] = []
    for i, (name, fmt, param) in enumerate(shapes):
        path, make = (CHAT, _chat) if i % 2 == 0 else (COMP, _comp)
        cases.append((f"response-format-{name}", path, make(response_format=fmt), {}, 400, param))
    for i, (name, schema) in enumerate(schemas):
        path, make = (CHAT, _chat) if i % 2 == 0 else (COMP, _comp)
        fmt = _with_schema(schema)
        cases.append((f"schema-{name}", path, make(response_format=fmt), {}, 400, SCHEMA))
    cases += [
        ("beam-width-negative", CHAT, _beam_chat(beam_width=-1), {}, 400, "beam_width"),
        ("beam-width-string", COMP, _beam_comp(beam_width="4"), {}, 400, "beam_width"),
        ("beam-n-zero", CHAT, _beam_chat(n=0), {}, 400, "n"),
        (
            "beam-length-penalty-string",
            COMP,
            _beam_comp(length_penalty="long"),
            {},
            400,
            "length_penalty",
        ),
        ("beam-early-stopping-int", COMP, _beam_comp(early_stopping=1), {}, 400, "early_stopping"),
        (
            "beam-max-tokens-above-limit",
            CHAT,
            _beam_chat(max_tokens=1_000_000),
            {},
            400,
            "max_tokens",
        ),
        (
            "beam-top-logprobs-above-limit",
            CHAT,
            _beam_chat(logprobs=True, top_logprobs=50),
            {},
            400,
            "top_logprobs",
        ),
        (
            "beam-json-object-completions",
            COMP,
            _beam_comp(response_format={"type": "json_object"}),
            {},
            400,
            "response_format",
        ),
    ]
    return cases


PROMPT_CASES: list[Case] = [
    (f"prompt-{name}", COMP, body, {}, 400, "prompt")
    for name, body in (
        ("null", _comp(prompt=None)),
        ("missing", {"model": "{model}"}),
        ("object", _comp(prompt={"text": "x"})),
        ("number", _comp(prompt=5)),
        ("bool", _comp(prompt=True)),
        ("mixed-text-and-ids", _comp(prompt=["a", 1])),
        ("float-ids", _comp(prompt=[1.5, 2.0])),
        ("bool-ids", _comp(prompt=[True, False])),
        ("three-levels", _comp(prompt=[[[1]]])),
        ("empty-text-in-list", _comp(prompt=["a", ""])),
        ("empty-ids-in-list", _comp(prompt=[[1], []])),
        ("10000-prompts", _comp(prompt=["a"] * 10_000)),
    )
]


def _understanding_cases() -> list[Case]:
    m = "{model}"
    two = ["a", "b"]
    rows: list[tuple[str, str, dict[str, Any], str]] = [
        ("embeddings-input-null", EMB, {"model": m, "input": None}, "input"),
        ("embeddings-input-missing", EMB, {"model": m}, "input"),
        ("embeddings-input-object", EMB, {"model": m, "input": {"text": "x"}}, "input"),
        ("embeddings-input-number", EMB, {"model": m, "input": 5}, "input"),
        ("embeddings-input-mixed", EMB, {"model": m, "input": ["a", 1]}, "input"),
        ("embeddings-input-float-ids", EMB, {"model": m, "input": [1.5]}, "input"),
        (
            "embeddings-encoding-int8",
            EMB,
            {"model": m, "input": "x", "encoding_format": "int8"},
            "encoding_format",
        ),
        (
            "embeddings-dimensions-zero",
            EMB,
            {"model": m, "input": "x", "dimensions": 0},
            "dimensions",
        ),
        (
            "embeddings-dimensions-negative",
            EMB,
            {"model": m, "input": "x", "dimensions": -5},
            "dimensions",
        ),
        (
            "embeddings-dimensions-string",
            EMB,
            {"model": m, "input": "x", "dimensions": "64"},
            "dimensions",
        ),
        (
            "embeddings-truncate-string",
            EMB,
            {"model": m, "input": "x", "truncate": "yes"},
            "truncate",
        ),
        ("classify-input-missing", CLS, {"model": m}, "input"),
        ("classify-input-number", CLS, {"model": m, "input": 5}, "input"),
        ("classify-input-empty-list", CLS, {"model": m, "input": []}, "input"),
        (
            "classify-labels-string",
            CLS,
            {"model": m, "input": "x", "candidate_labels": "a,b"},
            "candidate_labels",
        ),
        (
            "classify-labels-empty",
            CLS,
            {"model": m, "input": "x", "candidate_labels": []},
            "candidate_labels",
        ),
        (
            "classify-labels-one",
            CLS,
            {"model": m, "input": "x", "candidate_labels": ["a"]},
            "candidate_labels",
        ),
        (
            "classify-labels-numbers",
            CLS,
            {"model": m, "input": "x", "candidate_labels": [1, 2]},
            "candidate_labels.0",
        ),
        (
            "classify-labels-1000",
            CLS,
            {"model": m, "input": "x", "candidate_labels": [f"l{i}" for i in range(1000)]},
            "candidate_labels",
        ),
        (
            "classify-labels-duplicate",
            CLS,
            {"model": m, "input": "x", "candidate_labels": ["a", "a"]},
            "candidate_labels",
        ),
        (
            "classify-labels-blank",
            CLS,
            {"model": m, "input": "x", "candidate_labels": ["a", " "]},
            "candidate_labels",
        ),
        ("nli-input-string", NLI, {"model": m, "input": "p"}, "input"),
        (
            "nli-pair-without-hypothesis",
            NLI,
            {"model": m, "input": {"premise": "p"}},
            "input.hypothesis",
        ),
        ("nli-input-empty-list", NLI, {"model": m, "input": []}, "input"),
        ("nli-pair-as-list", NLI, {"model": m, "input": [["p", "h"]]}, "input"),
        (
            "nli-premise-number",
            NLI,
            {"model": m, "input": {"premise": 1, "hypothesis": "h"}},
            "input.premise",
        ),
        ("score-input-null", SCORE, {"model": m, "input": None}, "input"),
        ("score-input-number", SCORE, {"model": m, "input": 5}, "input"),
        ("score-input-empty-list", SCORE, {"model": m, "input": []}, "input"),
        ("score-input-empty-string", SCORE, {"model": m, "input": ""}, "input"),
        (
            "score-pair-without-continuation",
            SCORE,
            {"model": m, "input": {"prompt": "p"}},
            "input.continuation",
        ),
        (
            "score-pair-empty-continuation",
            SCORE,
            {"model": m, "input": {"prompt": "p", "continuation": ""}},
            "input",
        ),
        ("tokenize-prompt-missing", TOK, {"model": m}, "prompt"),
        ("tokenize-prompt-list", TOK, {"model": m, "prompt": ["a"]}, "prompt"),
        ("tokenize-prompt-null", TOK, {"model": m, "prompt": None}, "prompt"),
        (
            "tokenize-add-special-string",
            TOK,
            {"model": m, "prompt": "x", "add_special_tokens": "no"},
            "add_special_tokens",
        ),
        ("detokenize-tokens-string", DETOK, {"model": m, "tokens": "1 2 3"}, "tokens"),
        ("detokenize-tokens-null", DETOK, {"model": m, "tokens": None}, "tokens"),
        ("detokenize-tokens-missing", DETOK, {"model": m}, "tokens"),
        ("detokenize-tokens-nested", DETOK, {"model": m, "tokens": [[1, 2]]}, "tokens.0"),
        ("detokenize-tokens-floats", DETOK, {"model": m, "tokens": [1.5]}, "tokens.0"),
        ("detokenize-tokens-bools", DETOK, {"model": m, "tokens": [True]}, "tokens.0"),
        ("detokenize-tokens-strings", DETOK, {"model": m, "tokens": ["1"]}, "tokens.0"),
    ]
    # A template was filled with str.format: "{} {x}" answered 500, "{} {0.__class__}" read
    # attributes, "{} {:>999999999}" asked for a gigabyte. Only the one {} may hold a brace.
    for name, template in (
        ("without-slot", "nothing"),
        ("two-slots", "{} {}"),
        ("named-slot", "{label}"),
        ("format-field", "{} {x}"),
        ("attribute-access", "{} {0.__class__}"),
        ("huge-width", "{} {:>999999999}"),
        ("unclosed-brace", "{} {"),
        ("lone-closing-brace", "} {}"),
        ("escaped-braces", "{{}}"),
    ):
        body = {"model": m, "input": "x", "candidate_labels": two, "hypothesis_template": template}
        rows.append((f"classify-template-{name}", CLS, body, "hypothesis_template"))
    return [(name, path, body, {}, 400, param) for name, path, body, param in rows]


SWEEP_CASES: list[Case] = (
    NOT_JSON_NUMBERS
    + FRAMING
    + _model_cases()
    + MESSAGE_CASES
    + _field_cases()
    + _format_cases()
    + PROMPT_CASES
    + _understanding_cases()
)


HOSTILE_CASES: list[Case] = (
    _hostile_generation()
    + DEEP_BODY_CASES
    + _hostile_understanding()
    + _hostile_surrogates()
    + SWEEP_CASES
)


class AdminCase(NamedTuple):
    id: str
    method: str
    path: str
    body: dict[str, Any] | None
    status: int
    param: str | None


# Version numbers no database column holds answered 500 (an OverflowError in SQL).
ADMIN_CASES: list[AdminCase] = [
    AdminCase(
        "delete-version-20-digits",
        "DELETE",
        "/admin/models/{model}/versions/99999999999999999999",
        None,
        400,
        "number",
    ),
    AdminCase(
        "delete-version-2-64",
        "DELETE",
        f"/admin/models/{{model}}/versions/{BIG}",
        None,
        400,
        "number",
    ),
    AdminCase(
        "delete-version-2-31",
        "DELETE",
        f"/admin/models/{{model}}/versions/{2**31}",
        None,
        400,
        "number",
    ),
    AdminCase(
        "delete-version-superscript",
        "DELETE",
        "/admin/models/{model}/versions/%C2%B2",
        None,
        400,
        "number",
    ),
    AdminCase(
        "show-version-20-digits",
        "GET",
        "/admin/models/{model}/versions/99999999999999999999",
        None,
        400,
        "alias",
    ),
    AdminCase(
        "content-version-20-digits",
        "GET",
        "/admin/models/{model}/versions/99999999999999999999/content",
        None,
        400,
        "alias",
    ),
    AdminCase(
        "alias-to-version-2-64",
        "PUT",
        "/admin/models/{model}/aliases/prod",
        {"version": BIG},
        400,
        "version",
    ),
    AdminCase(
        "alias-to-version-20-digit-string",
        "PUT",
        "/admin/models/{model}/aliases/prod",
        {"version": "99999999999999999999"},
        400,
        "alias",
    ),
    AdminCase(
        "alias-to-version-superscript",
        "PUT",
        "/admin/models/{model}/aliases/prod",
        {"version": "\u00b2"},
        400,
        "alias",
    ),
]


def _admin_sweep() -> list[AdminCase]:
    """Bad names, bodies, numbers and queries for each admin route; none reaches a store or a
    deployment. ``{model}`` is a model of the store with one version."""
    alias = "/admin/models/{model}/aliases/prod"
    two = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    rows: list[tuple[str, str, str, Any, int, str | None]] = [
        # A cursor beyond any BIGINT was an OverflowError in SQL: a 500.
        (
            "records-before-20-digits",
            "GET",
            "/admin/requests?before=99999999999999999999",
            None,
            400,
            "before",
        ),
        ("records-before-2-63", "GET", f"/admin/requests?before={2**63}", None, 400, "before"),
        ("records-before-negative", "GET", "/admin/requests?before=-1", None, 400, "before"),
        ("records-before-word", "GET", "/admin/requests?before=abc", None, 400, "before"),
        ("records-limit-zero", "GET", "/admin/requests?limit=0", None, 400, "limit"),
        ("records-limit-negative", "GET", "/admin/requests?limit=-5", None, 400, "limit"),
        (
            "records-limit-20-digits",
            "GET",
            "/admin/requests?limit=99999999999999999999",
            None,
            400,
            "limit",
        ),
        ("records-since-word", "GET", "/admin/requests?since=yesterday", None, 400, "since"),
        (
            "records-until-year-zero",
            "GET",
            "/admin/requests?until=0000-01-01T00:00:00",
            None,
            400,
            "until",
        ),
        ("records-status-unknown", "GET", "/admin/requests?status=exploded", None, 400, "status"),
        ("create-model-name-traversal", "POST", "/admin/models", {"name": "../etc"}, 400, "name"),
        ("create-model-name-slash", "POST", "/admin/models", {"name": "a/b"}, 400, "name"),
        ("create-model-name-upper-case", "POST", "/admin/models", {"name": "Tiny"}, 400, "name"),
        ("create-model-name-empty", "POST", "/admin/models", {"name": ""}, 400, "name"),
        ("create-model-name-129-chars", "POST", "/admin/models", {"name": "a" * 129}, 400, "name"),
        ("create-model-name-nul", "POST", "/admin/models", {"name": "a\u0000b"}, 400, "name"),
        ("create-model-name-number", "POST", "/admin/models", {"name": 5}, 400, "name"),
        (
            "create-model-description-5000",
            "POST",
            "/admin/models",
            {"name": "fresh", "description": "x" * 5000},
            400,
            "description",
        ),
        (
            "create-model-unknown-field",
            "POST",
            "/admin/models",
            {"name": "fresh", "owner": "me"},
            400,
            "owner",
        ),
        ("create-model-no-body", "POST", "/admin/models", None, 400, None),
        ("create-model-body-list", "POST", "/admin/models", [{"name": "x"}], 400, None),
        (
            "alias-name-leading-digit",
            "PUT",
            "/admin/models/{model}/aliases/1abc",
            {"version": 1},
            400,
            "alias",
        ),
        (
            "alias-name-upper-case",
            "PUT",
            "/admin/models/{model}/aliases/Prod",
            {"version": 1},
            400,
            "alias",
        ),
        (
            "alias-name-65-chars",
            "PUT",
            "/admin/models/{model}/aliases/" + "a" * 65,
            {"version": 1},
            400,
            "alias",
        ),
        (
            "alias-name-nul",
            "PUT",
            "/admin/models/{model}/aliases/a%00b",
            {"version": 1},
            400,
            "alias",
        ),
        # A JSON true was taken for version 1.
        ("alias-to-version-true", "PUT", alias, {"version": True}, 400, "version"),
        ("alias-to-version-float", "PUT", alias, {"version": 1.5}, 400, "version"),
        ("alias-to-version-null", "PUT", alias, {"version": None}, 400, "version"),
        ("alias-to-version-list", "PUT", alias, {"version": [1]}, 400, "version"),
        ("alias-without-version", "PUT", alias, {}, 400, "version"),
        ("alias-unknown-field", "PUT", alias, {"version": 1, "force": True}, 400, "force"),
        ("alias-to-version-empty-string", "PUT", alias, {"version": ""}, 400, "alias"),
        ("alias-to-version-zero", "PUT", alias, {"version": 0}, 404, "version"),
        ("alias-to-version-negative", "PUT", alias, {"version": -1}, 404, "version"),
        (
            "delete-version-negative",
            "DELETE",
            "/admin/models/{model}/versions/-1",
            None,
            404,
            "version",
        ),
        (
            "delete-version-word",
            "DELETE",
            "/admin/models/{model}/versions/latest",
            None,
            400,
            "number",
        ),
        (
            "delete-version-float",
            "DELETE",
            "/admin/models/{model}/versions/1.5",
            None,
            400,
            "number",
        ),
        ("show-version-negative", "GET", "/admin/models/{model}/versions/-1", None, 400, "alias"),
        ("show-version-zero", "GET", "/admin/models/{model}/versions/0", None, 404, "version"),
        (
            "content-version-superscript",
            "GET",
            "/admin/models/{model}/versions/%C2%B9/content",
            None,
            400,
            "alias",
        ),
        (
            "import-two-sources",
            "POST",
            "/admin/models/{model}/import",
            {"path": "/tmp/x", "package": "y"},
            400,
            "path",
        ),
        ("import-no-source", "POST", "/admin/models/{model}/import", {}, 400, "path"),
        ("import-path-number", "POST", "/admin/models/{model}/import", {"path": 5}, 400, "path"),
        ("import-url", "POST", "/admin/models/{model}/import", {"url": "http://x"}, 400, "url"),
    ]
    deploy: list[tuple[str, dict[str, Any], str]] = [
        ("replicas-negative", {"replicas": -1}, "replicas"),
        ("replicas-65", {"replicas": 65}, "replicas"),
        ("replicas-2-64", {"replicas": BIG}, "replicas"),
        ("replicas-word", {"replicas": "two"}, "replicas"),
        ("replicas-float", {"replicas": 1.5}, "replicas"),
        ("model-empty", {"model": ""}, "model"),
        ("model-201-chars", {"model": "m" * 201}, "model"),
        ("name-traversal", {"name": "../x"}, "name"),
        ("name-nul", {"name": "a\u0000"}, "name"),
        ("name-space", {"name": "my model"}, "name"),
        ("unknown-field", {"gpus": 8}, "gpus"),
        ("engine-string", {"engine": "fast"}, "engine"),
        ("engine-context-negative", {"engine": {"context_size": -1}}, "engine.context_size"),
        ("engine-max-seqs-zero", {"engine": {"max_num_seqs": 0}}, "engine.max_num_seqs"),
        ("engine-backend-unknown", {"engine": {"backend": "tensorrt"}}, "engine.backend"),
        (
            "engine-grammar-timeout-negative",
            {"engine": {"grammar_timeout_s": -1}},
            "engine.grammar_timeout_s",
        ),
        ("engine-unknown-field", {"engine": {"gpu_layers": 99}}, "engine.gpu_layers"),
        ("wait-word", {"wait": "later"}, "wait"),
        ("autoscaling-string", {"autoscaling": "auto"}, "autoscaling"),
        (
            "autoscaling-min-above-max",
            {"autoscaling": {"min_replicas": 3, "max_replicas": 2}},
            "autoscaling",
        ),
        (
            "autoscaling-initial-outside",
            {"autoscaling": {"max_replicas": 2, "initial_replicas": 3}},
            "autoscaling",
        ),
        (
            "autoscaling-target-zero",
            {"autoscaling": {"target_ongoing_requests": 0}},
            "autoscaling.target_ongoing_requests",
        ),
        ("autoscaling-max-65", {"autoscaling": {"max_replicas": 65}}, "autoscaling.max_replicas"),
        (
            "autoscaling-delay-negative",
            {"autoscaling": {"upscale_delay_s": -1}},
            "autoscaling.upscale_delay_s",
        ),
        (
            "autoscaling-unknown-field",
            {"autoscaling": {"min_replica": 1}},
            "autoscaling.min_replica",
        ),
        ("placement-string", {"placement": "gpu"}, "placement"),
        ("placement-cpu", {"placement": {"resources": {"CPU": 2}}}, "placement.resources"),
        ("placement-zero", {"placement": {"resources": {"big": 0}}}, "placement.resources"),
        (
            "placement-bad-label",
            {"placement": {"label_selector": {"zone": "a b"}}},
            "placement.label_selector",
        ),
        ("placement-unknown-field", {"placement": {"nodes": ["a"]}}, "placement.nodes"),
    ]
    rows += [
        (f"deploy-{name}", "POST", "/admin/deployments", {"model": "tiny", **body}, 400, param)
        for name, body, param in deploy
    ]
    rows += [
        ("deploy-without-model", "POST", "/admin/deployments", {"replicas": 1}, 400, "model"),
        (
            "scale-negative",
            "PATCH",
            "/admin/deployments/{model}",
            {"replicas": -1},
            400,
            "replicas",
        ),
        ("scale-1000", "PATCH", "/admin/deployments/{model}", {"replicas": 1000}, 400, "replicas"),
        ("move-to-empty-model", "PATCH", "/admin/deployments/{model}", {"model": ""}, 400, "model"),
        (
            "autoscale-min-above-max",
            "PATCH",
            "/admin/deployments/{model}",
            {"autoscaling": {"min_replicas": 5, "max_replicas": 4}},
            400,
            "autoscaling",
        ),
        (
            "place-on-cpu",
            "PATCH",
            "/admin/deployments/{model}",
            {"placement": {"resources": {"CPU": 1}}},
            400,
            "placement.resources",
        ),
        (
            "rename-deployment",
            "PATCH",
            "/admin/deployments/{model}",
            {"name": "other"},
            400,
            "name",
        ),
        (
            "classifier-one-example",
            "POST",
            "/admin/classifiers",
            {"name": "c", "examples": two[:1]},
            400,
            "examples",
        ),
        (
            "classifier-label-129-chars",
            "POST",
            "/admin/classifiers",
            {"name": "c", "examples": [{"text": "a", "label": "x" * 129}, two[1]]},
            400,
            "examples.0.label",
        ),
        (
            "classifier-empty-text",
            "POST",
            "/admin/classifiers",
            {"name": "c", "examples": [{"text": "", "label": "x"}, two[1]]},
            400,
            "examples.0.text",
        ),
        (
            "classifier-name-empty",
            "POST",
            "/admin/classifiers",
            {"name": "", "examples": two},
            400,
            "name",
        ),
        (
            "classifier-examples-object",
            "POST",
            "/admin/classifiers",
            {"name": "c", "examples": {"a": "x"}},
            400,
            "examples",
        ),
        (
            "classifier-deploy-word",
            "POST",
            "/admin/classifiers",
            {"name": "c", "deploy": "yes", "examples": two},
            400,
            "deploy",
        ),
        (
            "classifier-name-traversal",
            "POST",
            "/admin/classifiers",
            {"name": "../../x", "deploy": False, "examples": two},
            400,
            "name",
        ),
        (
            "classifier-unknown-embedder",
            "POST",
            "/admin/classifiers",
            {"name": "c", "model": "nope", "deploy": False, "examples": two},
            404,
            "model",
        ),
    ]
    return [AdminCase(*row) for row in rows]


ADMIN_CASES += _admin_sweep()


def encode(body: bytes | dict[str, Any], model: str) -> bytes:
    """``body`` as sent, with ``"{model}`` at the start of a string (a whole ``"{model}"``, or
    ``"{model}:3"``) made the served model's name."""
    name = json.dumps(model)[:-1]  # the opening quote and the name, escaped
    if isinstance(body, bytes):
        return body.replace(b'"{model}', name.encode())
    return json.dumps(body).replace('"{model}', name).encode()


def check_error_envelope(payload: Any) -> dict[str, Any]:
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return dict(err)


def expect_error(r: Any, status: int, param: str | None, code: str | None = None) -> str:
    """Assert an HTTP response is ``status`` in the OpenAI envelope naming ``param`` (and
    ``code``); returns the message."""
    assert r.status_code == status, r.text
    err = check_error_envelope(r.json())
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return str(err["message"])


# -- the Files and Batch APIs and /admin/jobs (issue 11) -----------------------------------------

JOB_FILES_MAX_BYTES = 1 << 20  # `files.max_bytes` of the servers the job cases run against
_BATCH_LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": CHAT,
    "body": {"model": "m", "messages": MSG},
}


def _batch_file(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


class Upload(NamedTuple):
    """A ``multipart/form-data`` upload to /v1/files; a field given as ``None`` is left out."""

    purpose: str | None
    data: bytes | None
    filename: str = "in.jsonl"


def multipart(upload: Upload) -> tuple[str, bytes]:
    """The Content-Type and body of ``upload``."""
    boundary = "hostile-boundary-7f3a"
    parts = []
    if upload.purpose is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            f"{upload.purpose}\r\n".encode()
        )
    if upload.data is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{upload.filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + upload.data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


class JobCase(NamedTuple):
    """A bad request to /v1/files, /v1/batches or /admin/jobs (``admin``: with an admin key,
    else a user's). ``{batch_file}`` (a batch file of chat lines), ``{mixed_file}`` (a batch file
    whose second line is an embeddings request), ``{data_file}`` (purpose user_data),
    ``{other_file}`` (another key's batch file) and ``{finished_batch}`` (a cancelled batch of the
    user) are filled in, in paths and in a JSON body's strings."""

    id: str
    method: str
    path: str
    body: dict[str, Any] | Upload | bytes | None
    status: int
    param: str | None
    code: str | None = None
    admin: bool = False


def fill(value: Any, names: dict[str, str]) -> Any:
    """``value`` with every ``{name}`` of ``names`` filled in, in strings at any depth."""
    if isinstance(value, str):
        for name, replacement in names.items():
            value = value.replace("{" + name + "}", replacement)
        return value
    if isinstance(value, dict):
        return {fill(k, names): fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, names) for v in value]
    return value


def _batch(**fields: Any) -> dict[str, Any]:
    return {
        "input_file_id": "{batch_file}",
        "endpoint": CHAT,
        "completion_window": "24h",
        **fields,
    }


def _file_cases() -> list[JobCase]:
    line = _BATCH_LINE
    uploads: list[tuple[str, Upload, int, str | None, str | None]] = [
        ("not-jsonl", Upload("batch", b"hello\nworld\n"), 400, "file", "invalid_file"),
        ("jsonl-of-arrays", Upload("batch", b"[1, 2]\n"), 400, "file", "invalid_file"),
        ("not-utf8", Upload("batch", b'{"a": "\xff\xfe"}\n'), 400, "file", "invalid_file"),
        ("empty-batch-file", Upload("batch", b""), 400, "file", "invalid_file"),
        ("only-blank-lines", Upload("batch", b"\n \n\n"), 400, "file", "invalid_file"),
        (
            "line-without-method",
            Upload("batch", _batch_file({k: v for k, v in line.items() if k != "method"})),
            400,
            "file",
            "invalid_file",
        ),
        (
            "line-method-get",
            Upload("batch", _batch_file({**line, "method": "GET"})),
            400,
            "file",
            "invalid_file",
        ),
        (
            "line-url-unknown",
            Upload("batch", _batch_file({**line, "url": "/v1/images/generations"})),
            400,
            "file",
            "invalid_file",
        ),
        (
            "line-body-string",
            Upload("batch", _batch_file({**line, "body": "hi"})),
            400,
            "file",
            "invalid_file",
        ),
        (
            "line-custom-id-number",
            Upload("batch", _batch_file({**line, "custom_id": 7})),
            400,
            "file",
            "invalid_file",
        ),
        (
            "line-custom-id-513-chars",
            Upload("batch", _batch_file({**line, "custom_id": "c" * 513})),
            400,
            "file",
            "invalid_file",
        ),
        (
            "duplicate-custom-id",
            Upload("batch", _batch_file(line, {**line, "url": EMB})),
            400,
            "file",
            "invalid_file",
        ),
        (
            "fine-tune-without-assistant",
            Upload("fine-tune", b'{"messages": [{"role": "user", "content": "hi"}]}\n'),
            400,
            "file",
            "invalid_file",
        ),
        ("evals-item-string", Upload("evals", b'{"item": "x"}\n'), 400, "file", "invalid_file"),
        (
            "over-the-limit",
            Upload("user_data", b"x" * (JOB_FILES_MAX_BYTES + 1)),
            413,
            "file",
            "file_too_large",
        ),
        ("purpose-unknown", Upload("assistants", b"{}\n"), 400, "purpose", "invalid_purpose"),
        ("purpose-missing", Upload(None, b"{}\n"), 400, "purpose", "missing_purpose"),
        ("file-missing", Upload("batch", None), 400, "file", "missing_file"),
        (
            "filename-control-character",
            Upload("user_data", b"x", filename="a\x07b"),
            400,
            "file",
            "invalid_filename",
        ),
    ]
    rows = [
        JobCase(f"upload-{name}", "POST", "/v1/files", upload, status, param, code)
        for name, upload, status, param, code in uploads
    ]
    rows += [
        JobCase("upload-json-body", "POST", "/v1/files", {"purpose": "batch"}, 415, "Content-Type"),
        JobCase("files-limit-negative", "GET", "/v1/files?limit=-1", None, 400, "limit"),
        JobCase("files-limit-zero", "GET", "/v1/files?limit=0", None, 400, "limit"),
        JobCase("files-limit-10001", "GET", "/v1/files?limit=10001", None, 400, "limit"),
        JobCase(
            "files-limit-20-digits",
            "GET",
            "/v1/files?limit=99999999999999999999",
            None,
            400,
            "limit",
        ),
        JobCase("files-limit-word", "GET", "/v1/files?limit=many", None, 400, "limit"),
        JobCase("files-after-garbage", "GET", "/v1/files?after=garbage", None, 400, "after"),
        JobCase("files-after-65-chars", "GET", "/v1/files?after=" + "f" * 65, None, 400, "after"),
        JobCase("files-order-sideways", "GET", "/v1/files?order=sideways", None, 400, "order"),
        JobCase(
            "file-unknown",
            "GET",
            "/v1/files/file-000000000000000000000000",
            None,
            404,
            "file_id",
            "file_not_found",
        ),
        JobCase("file-id-garbage", "GET", "/v1/files/garbage", None, 404, "file_id"),
        JobCase("file-of-another-key", "GET", "/v1/files/{other_file}", None, 404, "file_id"),
        JobCase(
            "content-of-another-key",
            "GET",
            "/v1/files/{other_file}/content",
            None,
            404,
            "file_id",
        ),
        JobCase(
            "delete-another-keys-file", "DELETE", "/v1/files/{other_file}", None, 404, "file_id"
        ),
        JobCase("delete-unknown-file", "DELETE", "/v1/files/garbage", None, 404, "file_id"),
    ]
    return rows


def _batch_cases() -> list[JobCase]:
    rows: list[tuple[str, Any, int, str | None, str | None]] = [
        (
            "unknown-file",
            _batch(input_file_id="file-000000000000000000000000"),
            404,
            "input_file_id",
            "file_not_found",
        ),
        ("file-id-garbage", _batch(input_file_id="garbage"), 404, "input_file_id", None),
        ("file-id-65-chars", _batch(input_file_id="f" * 65), 400, "input_file_id", None),
        ("file-id-number", _batch(input_file_id=5), 400, "input_file_id", None),
        ("file-of-another-key", _batch(input_file_id="{other_file}"), 404, "input_file_id", None),
        (
            "wrong-purpose",
            _batch(input_file_id="{data_file}"),
            400,
            "input_file_id",
            "invalid_file_purpose",
        ),
        (
            "line-url-not-the-endpoint",
            _batch(input_file_id="{mixed_file}"),
            400,
            "endpoint",
            "endpoint_mismatch",
        ),
        (
            "endpoint-unsupported",
            _batch(endpoint="/v1/images/generations"),
            400,
            "endpoint",
            "unsupported_endpoint",
        ),
        (
            "endpoint-missing",
            {"input_file_id": "{batch_file}", "completion_window": "24h"},
            400,
            "endpoint",
            None,
        ),
        (
            "file-id-missing",
            {"endpoint": CHAT, "completion_window": "24h"},
            400,
            "input_file_id",
            None,
        ),
        (
            "window-missing",
            {"input_file_id": "{batch_file}", "endpoint": CHAT},
            400,
            "completion_window",
            None,
        ),
        ("window-25h", _batch(completion_window="25h"), 400, "completion_window", None),
        ("window-zero", _batch(completion_window="0s"), 400, "completion_window", None),
        ("window-word", _batch(completion_window="forever"), 400, "completion_window", None),
        ("window-negative", _batch(completion_window="-1h"), 400, "completion_window", None),
        ("window-number", _batch(completion_window=24), 400, "completion_window", None),
        ("window-null", _batch(completion_window=None), 400, "completion_window", None),
        (
            "window-17-chars",
            _batch(completion_window="1" * 16 + "h"),
            400,
            "completion_window",
            None,
        ),
        (
            "window-20-digits",
            _batch(completion_window="9" * 15 + "s"),
            400,
            "completion_window",
            None,
        ),
        (
            "metadata-17-pairs",
            _batch(metadata={f"k{i}": "v" for i in range(17)}),
            400,
            "metadata",
            None,
        ),
        ("metadata-key-65-chars", _batch(metadata={"k" * 65: "v"}), 400, "metadata", None),
        ("metadata-key-empty", _batch(metadata={"": "v"}), 400, "metadata", None),
        ("metadata-value-513-chars", _batch(metadata={"k": "v" * 513}), 400, "metadata", None),
        ("metadata-value-number", _batch(metadata={"k": 1}), 400, "metadata", None),
        ("metadata-value-object", _batch(metadata={"k": {"a": "b"}}), 400, "metadata", None),
        ("metadata-list", _batch(metadata=["a"]), 400, "metadata", None),
        ("metadata-string", _batch(metadata="a=b"), 400, "metadata", None),
    ]
    cases = [
        JobCase(f"batch-{name}", "POST", "/v1/batches", body, status, param, code)
        for name, body, status, param, code in rows
    ]
    cases += [
        JobCase("batch-body-not-json", "POST", "/v1/batches", b'{"endpoint": ', 400, None),
        JobCase("batch-body-list", "POST", "/v1/batches", b"[]", 400, None),
        JobCase(
            "cancel-finished-batch",
            "POST",
            "/v1/batches/{finished_batch}/cancel",
            None,
            409,
            "batch_id",
            "job_finished",
        ),
        JobCase(
            "cancel-unknown-batch",
            "POST",
            "/v1/batches/batch_000000000000000000000000/cancel",
            None,
            404,
            "batch_id",
            "batch_not_found",
        ),
        JobCase("batch-id-garbage", "GET", "/v1/batches/garbage", None, 404, "batch_id"),
        JobCase("batches-limit-negative", "GET", "/v1/batches?limit=-1", None, 400, "limit"),
        JobCase("batches-limit-zero", "GET", "/v1/batches?limit=0", None, 400, "limit"),
        JobCase("batches-limit-101", "GET", "/v1/batches?limit=101", None, 400, "limit"),
        JobCase(
            "batches-limit-20-digits",
            "GET",
            "/v1/batches?limit=99999999999999999999",
            None,
            400,
            "limit",
        ),
        JobCase("batches-after-garbage", "GET", "/v1/batches?after=garbage", None, 400, "after"),
        JobCase(
            "batches-after-a-file-id",
            "GET",
            "/v1/batches?after=file-000000000000000000000000",
            None,
            400,
            "after",
        ),
        JobCase(
            "batches-after-65-chars", "GET", "/v1/batches?after=" + "b" * 65, None, 400, "after"
        ),
    ]
    return cases


def _admin_job_cases() -> list[JobCase]:
    rows: list[tuple[str, str, str, int, str | None, str | None]] = [
        ("jobs-limit-negative", "GET", "/admin/jobs?limit=-1", 400, "limit", None),
        ("jobs-limit-zero", "GET", "/admin/jobs?limit=0", 400, "limit", None),
        ("jobs-limit-1001", "GET", "/admin/jobs?limit=1001", 400, "limit", None),
        ("jobs-after-garbage", "GET", "/admin/jobs?after=garbage", 400, "after", None),
        ("jobs-status-unknown", "GET", "/admin/jobs?status=exploded", 400, "status", None),
        ("jobs-status-only-commas", "GET", "/admin/jobs?status=,,", 400, "status", None),
        ("jobs-kind-33-chars", "GET", "/admin/jobs?kind=" + "k" * 33, 400, "kind", None),
        (
            "job-unknown",
            "GET",
            "/admin/jobs/batch_000000000000000000000000",
            404,
            "job_id",
            "job_not_found",
        ),
        ("job-id-garbage", "GET", "/admin/jobs/garbage", 404, "job_id", None),
        ("events-of-unknown-job", "GET", "/admin/jobs/garbage/events", 404, "job_id", None),
        (
            "events-after-negative",
            "GET",
            "/admin/jobs/{finished_batch}/events?after=-1",
            400,
            "after",
            None,
        ),
        (
            "events-after-word",
            "GET",
            "/admin/jobs/{finished_batch}/events?after=x",
            400,
            "after",
            None,
        ),
        # A cursor beyond the INTEGER column of event numbers was an OverflowError: a 500.
        (
            "events-after-2-31",
            "GET",
            f"/admin/jobs/{{finished_batch}}/events?after={2**31}",
            400,
            "after",
            None,
        ),
        (
            "events-after-20-digits",
            "GET",
            "/admin/jobs/{finished_batch}/events?after=99999999999999999999",
            400,
            "after",
            None,
        ),
        (
            "events-after-2-63",
            "GET",
            f"/admin/jobs/{{finished_batch}}/events?after={2**63}",
            400,
            "after",
            None,
        ),
        (
            "events-limit-zero",
            "GET",
            "/admin/jobs/{finished_batch}/events?limit=0",
            400,
            "limit",
            None,
        ),
        (
            "cancel-finished-job",
            "POST",
            "/admin/jobs/{finished_batch}/cancel",
            409,
            "job_id",
            "job_finished",
        ),
        ("cancel-unknown-job", "POST", "/admin/jobs/garbage/cancel", 404, "job_id", None),
    ]
    return [
        JobCase(name, method, path, None, status, param, code, admin=True)
        for name, method, path, status, param, code in rows
    ]


JOB_CASES: list[JobCase] = _file_cases() + _batch_cases() + _admin_job_cases()
