"""The table of bad requests every server (fake engine or real) must refuse with a clear 4xx.

Each case: (id, path, body, extra headers, expected status, expected `param` or None), and
for ``ADMIN_CASES`` the method. A body given as bytes is sent raw; a dict is sent as JSON
(``json.dumps`` writes a lone surrogate as the escape ``"\\ud800"``, as an attacker would).
``{model}`` is filled in, in bodies and paths.

``HOSTILE_CASES`` are inputs that once crashed a worker or answered 500 (issue 10), each with
its neighbours: other endpoints, other fields, other spellings of the same trick.
"""

from __future__ import annotations

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

HOSTILE_CASES: list[Case] = (
    _hostile_generation() + DEEP_BODY_CASES + _hostile_understanding() + _hostile_surrogates()
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


def encode(body: bytes | dict[str, Any], model: str) -> bytes:
    if isinstance(body, bytes):
        return body.replace(b'"{model}"', json.dumps(model).encode())
    return json.dumps(body).replace('"{model}"', json.dumps(model)).encode()


def check_error_envelope(payload: Any) -> dict[str, Any]:
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return dict(err)
