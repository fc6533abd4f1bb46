"""Bounds on what a ``response_format`` JSON schema may ask, checked before it reaches a worker.

A worker turns the schema into a grammar (llama.cpp) or an automaton (transformers), and a
small schema can ask for a huge one: ``{"type": "string", "maxLength": 100000}`` becomes a
grammar nested 100,000 levels deep, which crashes llama.cpp's grammar parser; an enum of
100,000 strings takes it half a minute. ``check_schema_limits`` refuses, with a 400 that names
the limit (``Limits.schema_*``), a schema beyond any of them:

- nesting deeper than ``schema_max_depth`` objects and arrays (the walk here is iterative, so
  a schema nested thousands of levels deep is refused without exhausting a stack);
- ``minLength``/``maxLength``/``minItems``/``maxItems`` (and their kin) or a ``pattern``
  quantifier ``{m,n}`` above ``schema_max_repeat``, or a pattern nesting its groups deeper
  than ``schema_max_depth``;
- an ``enum`` of more than ``schema_max_enum`` values, an object of more than
  ``schema_max_properties`` properties, more than ``schema_max_bytes`` in all;
- a ``$ref`` to anything but a part of the schema itself;
- text (keys or values) holding a lone UTF-16 surrogate, or an integer beyond 64 bits (the
  worker frames that carry the schema hold no more), or NaN or Infinity (not JSON at all).

Values (``enum``, ``const``, ``default``, ``examples``) count for depth, size and text, never
as keywords: ``{"const": {"maxLength": 10**6}}`` asks for nothing long.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from lmaas.config import Limits
from lmaas.errors import InvalidRequestError

PARAM = "response_format.json_schema.schema"

_REPEAT_KEYWORDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minContains",
    "maxContains",
    "minProperties",
    "maxProperties",
)
_VALUE_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
# {m}, {m,} or {m,n} in a regular expression; digits only, so int() stays cheap after a
# length check.
_QUANTIFIER = re.compile(r"\{\s*([0-9]*)\s*(?:,\s*([0-9]*)\s*)?\}")


def _refuse(message: str, limit: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(f"{message} (limits.{limit})", param=param, code="schema_too_large")


def check_schema_limits(schema: dict[str, Any], limits: Limits, param: str = PARAM) -> None:
    """Raise ``InvalidRequestError`` (naming ``param``: by default
    ``response_format.json_schema.schema``; a tool's ``tools[i].function.parameters``) if
    ``schema`` asks for more than ``limits`` allow; see the module docstring."""
    # (node, depth, whether it is a value rather than a schema)
    stack: list[tuple[Any, int, bool]] = [(schema, 1, False)]
    while stack:
        node, depth, is_value = stack.pop()
        if isinstance(node, str):
            _check_text(node, param)
            continue
        if isinstance(node, int) and not -(2**63) <= node < 2**63:
            raise InvalidRequestError(
                "the JSON schema holds an integer beyond 64 bits", param=param
            )
        if isinstance(node, float) and not math.isfinite(node):
            # Python's JSON reader takes the literals NaN and Infinity, which JSON has not.
            raise InvalidRequestError(
                "the JSON schema holds NaN or Infinity, which are not JSON numbers", param=param
            )
        if not isinstance(node, dict | list):
            continue
        if depth > limits.schema_max_depth:
            raise _refuse(
                f"the JSON schema nests deeper than {limits.schema_max_depth} levels of "
                "objects and arrays",
                "schema_max_depth",
                param,
            )
        if isinstance(node, list):
            stack.extend((item, depth + 1, is_value) for item in node)
            continue
        if not is_value:
            _check_keywords(node, limits, depth, param)
        for key, value in node.items():
            _check_text(key, param)
            stack.append((value, depth + 1, is_value or key in _VALUE_KEYWORDS))
    size = len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > limits.schema_max_bytes:
        raise _refuse(
            f"the JSON schema is {size} bytes as compact JSON; this server allows at most "
            f"{limits.schema_max_bytes}",
            "schema_max_bytes",
            param,
        )


def _check_text(text: str, param: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"the JSON schema holds a lone UTF-16 surrogate (\\u{ord(text[exc.start]):04x}), "
            "which is not Unicode text; send valid UTF-8",
            param=param,
        ) from None


def _check_keywords(node: dict[str, Any], limits: Limits, depth: int, param: str) -> None:
    """The keywords of one (sub)schema; a keyword of the wrong type is left to the schema
    validator, which runs after this walk."""
    for keyword in _REPEAT_KEYWORDS:
        value = node.get(keyword)
        # (true and false are ints too, but never above the limit)
        if isinstance(value, int | float) and value > limits.schema_max_repeat:
            raise _refuse(
                f"{keyword} is {_shown(value)}; this server allows at most "
                f"{limits.schema_max_repeat}",
                "schema_max_repeat",
                param,
            )
    enum = node.get("enum")
    if isinstance(enum, list) and len(enum) > limits.schema_max_enum:
        raise _refuse(
            f"an enum has {len(enum)} values; this server allows at most {limits.schema_max_enum}",
            "schema_max_enum",
            param,
        )
    properties = node.get("properties")
    if isinstance(properties, dict) and len(properties) > limits.schema_max_properties:
        raise _refuse(
            f"an object has {len(properties)} properties; this server allows at most "
            f"{limits.schema_max_properties}",
            "schema_max_properties",
            param,
        )
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        _check_pattern(pattern, limits, depth, param)
    ref = node.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        raise InvalidRequestError(
            f"$ref {ref[:80]!r} points outside the schema; only references into the schema "
            "itself ('#/...') are followed",
            param=param,
        )


def _check_pattern(pattern: str, limits: Limits, depth: int, param: str) -> None:
    for match in _QUANTIFIER.finditer(pattern):
        for digits in match.groups():
            if digits and (len(digits) > 9 or int(digits) > limits.schema_max_repeat):
                raise _refuse(
                    f"the pattern quantifier {_shown(match.group(0))} repeats more than "
                    f"{limits.schema_max_repeat} times",
                    "schema_max_repeat",
                    param,
                )
    if depth + _group_depth(pattern) > limits.schema_max_depth:
        raise _refuse(
            f"the pattern's groups, counted with the schema around them, nest deeper than "
            f"{limits.schema_max_depth} levels",
            "schema_max_depth",
            param,
        )


def _group_depth(pattern: str) -> int:
    """How deep the parentheses of a regular expression nest (escapes and classes skipped)."""
    deepest = level = 0
    escaped = in_class = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            level += 1
            deepest = max(deepest, level)
        elif char == ")":
            level = max(level - 1, 0)
    return deepest


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)"
