"""The bounds on a response_format JSON schema: each limit refuses just past its value (naming
itself), leaves the value itself alone, and the walk survives schemas nested far deeper than
Python's recursion limit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lmaas.config import Limits
from lmaas.errors import InvalidRequestError
from lmaas.gateway.serving.schema_limits import PARAM, check_schema_limits

LIMITS = Limits(
    schema_max_bytes=4096,
    schema_max_depth=8,
    schema_max_repeat=100,
    schema_max_enum=10,
    schema_max_properties=5,
)


def refusal(schema: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        check_schema_limits(schema, LIMITS)
    assert info.value.param == PARAM
    return info.value


def nested(depth: int) -> dict[str, Any]:
    """A schema ``depth`` objects deep: arrays of arrays of ... integers."""
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth - 1):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    "keyword", ["maxLength", "minLength", "maxItems", "minItems", "maxProperties", "maxContains"]
)
def test_repetition_counts_are_bounded(keyword: str) -> None:
    check_schema_limits({"type": "string", keyword: 100}, LIMITS)
    error = refusal({"type": "string", keyword: 101})
    assert "limits.schema_max_repeat" in error.message and keyword in error.message
    assert error.code == "schema_too_large"


def test_repetition_counts_as_floats_and_infinity_are_bounded() -> None:
    assert "schema_max_repeat" in refusal({"maxLength": 1e6}).message
    assert "schema_max_repeat" in refusal({"maxItems": float("inf")}).message
    check_schema_limits({"maxLength": 100.0, "minLength": True}, LIMITS)


def test_a_repetition_deep_inside_is_found() -> None:
    schema = {"type": "object", "properties": {"a": {"anyOf": [{"maxLength": 10**6}]}}}
    assert "schema_max_repeat" in refusal(schema).message


@pytest.mark.parametrize(
    "pattern", ["^a{101}$", "^a{0,101}$", "^a{101,}$", "^(ab){2,99999999999999999999}$"]
)
def test_pattern_quantifiers_are_bounded(pattern: str) -> None:
    assert "schema_max_repeat" in refusal({"type": "string", "pattern": pattern}).message


def test_pattern_within_bounds_and_escaped_classes_pass() -> None:
    check_schema_limits({"type": "string", "pattern": r"^[(]{3}a{1,100}\(\)$"}, LIMITS)


def test_pattern_groups_count_toward_depth() -> None:
    check_schema_limits({"pattern": "(((a)))"}, LIMITS)
    error = refusal({"pattern": "(" * 8 + "a" + ")" * 8})
    assert "schema_max_depth" in error.message


def test_enum_size_is_bounded() -> None:
    check_schema_limits({"enum": list(range(10))}, LIMITS)
    error = refusal({"enum": [str(i) for i in range(11)]})
    assert "11 values" in error.message and "limits.schema_max_enum" in error.message


def test_properties_per_object_are_bounded() -> None:
    props = {f"p{i}": {"type": "integer"} for i in range(6)}
    check_schema_limits({"type": "object", "properties": dict(list(props.items())[:5])}, LIMITS)
    assert "schema_max_properties" in refusal({"type": "object", "properties": props}).message


def test_depth_is_bounded_without_recursion() -> None:
    check_schema_limits(nested(8), LIMITS)
    assert "limits.schema_max_depth" in refusal(nested(9)).message
    # Far beyond the interpreter's recursion limit: refused, not a RecursionError.
    assert "schema_max_depth" in refusal(nested(50_000)).message


def test_total_size_is_bounded() -> None:
    schema = {"type": "string", "description": "x" * 4000}
    assert len(json.dumps(schema, separators=(",", ":"))) <= 4096
    check_schema_limits(schema, LIMITS)
    error = refusal({"type": "string", "description": "x" * 4100})
    assert "limits.schema_max_bytes" in error.message


def test_values_are_not_read_as_keywords() -> None:
    schema = {"const": {"maxLength": 10**6, "enum": list(range(50))}, "default": {"minItems": 500}}
    check_schema_limits(schema, LIMITS)


def test_values_still_count_for_depth() -> None:
    value: Any = 1
    for _ in range(10):
        value = [value]
    assert "schema_max_depth" in refusal({"const": value}).message


@pytest.mark.parametrize(
    "schema",
    [
        {"enum": ["a\ud800b"]},
        {"properties": {"\udc00": {"type": "string"}}},
        {"description": "x\ud83d"},
    ],
    ids=["value", "key", "description"],
)
def test_lone_surrogates_are_refused(schema: dict[str, Any]) -> None:
    assert "surrogate" in refusal(schema).message


@pytest.mark.parametrize(
    "schema", [{"const": 2**64}, {"enum": [1, -(2**63) - 1]}, {"minimum": 2**70}]
)
def test_integers_beyond_64_bits_are_refused(schema: dict[str, Any]) -> None:
    assert "64 bits" in refusal(schema).message


@pytest.mark.parametrize(
    "schema",
    [{"maximum": float("nan")}, {"const": float("inf")}, {"enum": ["a", {"b": [float("-inf")]}]}],
)
def test_nan_and_infinity_are_refused(schema: dict[str, Any]) -> None:
    # Python's JSON reader takes the literals NaN and Infinity; JSON has neither.
    assert "NaN or Infinity" in refusal(schema).message


def test_64_bit_integers_pass() -> None:
    check_schema_limits({"enum": [2**63 - 1, -(2**63)], "minimum": 0}, LIMITS)


def test_paired_surrogates_are_text() -> None:
    check_schema_limits({"enum": ["emoji \U0001f600", "é"]}, LIMITS)


@pytest.mark.parametrize("ref", ["https://example.com/schema.json", "file:///etc/passwd", "a"])
def test_refs_outside_the_schema_are_refused(ref: str) -> None:
    assert "outside the schema" in refusal({"$ref": ref}).message


def test_refs_into_the_schema_pass() -> None:
    check_schema_limits({"$defs": {"a": {"type": "integer"}}, "$ref": "#/$defs/a"}, LIMITS)


def test_the_default_limits_refuse_the_reported_crashes() -> None:
    limits = Limits()
    for schema in (
        {"type": "string", "maxLength": 100000},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 1000000},
        {"enum": [f"value {i}" for i in range(100_000)]},
        nested(200),
    ):
        with pytest.raises(InvalidRequestError):
            check_schema_limits(schema, limits)
