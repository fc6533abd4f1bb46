"""Grammars on the real llama.cpp backend (the shipped SmolLM2, in process): grammars nested
deep enough to overflow llama.cpp's parser are refused with a 400 instead of crashing the
process, schemas it cannot express are refused, and ordinary ones still build (and are
converted once for the n choices of a request)."""

from __future__ import annotations

import pytest

from lmaas.errors import InvalidRequestError
from lmaas.protocol.engine import SamplingParams, ToolCallSpec
from lmaas.worker.backends.llamacpp.generate import (
    MAX_GRAMMAR_NESTING,
    LlamaCppBackend,
    grammar_nesting,
    schema_grammar,
)


def nested_grammar(depth: int) -> str:
    return "root ::= " + '("a" ' * depth + ")?" * depth + "\n"


def test_grammar_nesting_skips_literals_classes_and_comments() -> None:
    assert grammar_nesting(nested_grammar(3)) == 3
    assert grammar_nesting('root ::= "((((" [(((] ("x")  # (((((\n') == 1
    assert grammar_nesting(r'root ::= "\"(" ("a" ("b"))') == 2


def test_a_grammar_that_would_crash_the_parser_is_refused(shipped_llama: LlamaCppBackend) -> None:
    # 20,000 levels overflow llama.cpp's recursive parser: a segfault, not an error.
    for depth in (MAX_GRAMMAR_NESTING + 1, 20_000, 100_000):
        with pytest.raises(InvalidRequestError) as err:
            shipped_llama.make_sampler(SamplingParams(grammar=nested_grammar(depth)))
        assert err.value.param == "response_format"


def test_the_reported_schema_is_refused_in_the_worker_too(shipped_llama: LlamaCppBackend) -> None:
    schema = {"type": "string", "maxLength": 100000}
    with pytest.raises(InvalidRequestError) as err:
        shipped_llama.make_sampler(SamplingParams(json_schema=schema))
    assert "nests its groups deeper" in err.value.message


def test_a_schema_the_converter_cannot_express_is_a_400(shipped_llama: LlamaCppBackend) -> None:
    with pytest.raises(InvalidRequestError) as err:
        shipped_llama.make_sampler(SamplingParams(json_schema={"type": "array", "prefixItems": 5}))
    assert err.value.param == "response_format.json_schema.schema"


def test_an_ordinary_schema_builds_and_converts_once(shipped_llama: LlamaCppBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 100}, "n": {"type": "integer"}},
        "required": ["name"],
    }
    schema_grammar.cache_clear()
    samplers = [shipped_llama.make_sampler(SamplingParams(json_schema=schema)) for _ in range(3)]
    try:
        assert all(s.grammar is not None for s in samplers)
        info = schema_grammar.cache_info()
        assert (info.misses, info.hits) == (1, 2)
    finally:
        for sampler in samplers:
            shipped_llama.free_sampler(sampler)


def test_a_tool_call_grammar_parses_in_llama_cpp(shipped_llama: LlamaCppBackend) -> None:
    arguments = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    call = {
        "type": "object",
        "properties": {"name": {"const": "search"}, "arguments": arguments},
        "required": ["name", "arguments"],
    }
    for allow_text, parallel in ((False, False), (True, True)):
        spec = ToolCallSpec(call_schema=call, allow_text=allow_text, parallel=parallel)
        sampler = shipped_llama.make_sampler(SamplingParams(tool_calls=spec))
        try:
            assert sampler.grammar is not None
        finally:
            shipped_llama.free_sampler(sampler)
