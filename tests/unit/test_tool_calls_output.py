"""Tool calling, output side: generated text read back into calls (whole or token by token),
the chat format's bodies and stream deltas, and the constraint each backend builds."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from lmaas.config import Limits
from lmaas.errors import InvalidRequestError
from lmaas.gateway.serving.chat import ChatFormat
from lmaas.gateway.serving.tool_parse import (
    CallArguments,
    CallStart,
    Text,
    ToolCallParser,
    parse_all,
)
from lmaas.protocol.engine import FinishReason, SamplingParams, TokenEvent, ToolCallSpec
from lmaas.protocol.openai import ChatCompletionRequest
from lmaas.worker.backends.llamacpp.tool_grammar import gbnf_literal, tool_call_grammar
from lmaas.worker.backends.transformers.guides import Guides, tool_call_regex
from lmaas.worker.backends.transformers.sampler import make_sampler, sample
from tests.fakes import fake_info
from tests.fakes_templates import inline_renderer

TWO_CALLS = (
    '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa\\"ris}", "n": [1, {"x": 2}]}}'
    '\n</tool_call>\n<tool_call>{ "name" : "ad\\u0064", "arguments" : {} }</tool_call>'
)
WEATHER = {
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_whole_output_reads_into_calls() -> None:
    parsed = parse_all(TWO_CALLS)
    assert [(c.name, c.complete) for c in parsed.calls] == [("get_weather", True), ("add", True)]
    assert json.loads(parsed.calls[0].arguments) == {"city": 'Pa"ris}', "n": [1, {"x": 2}]}
    assert parsed.calls[1].arguments == "{}"
    assert parsed.content is None
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in parsed.calls)
    assert parsed.calls[0].id != parsed.calls[1].id


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_pieces_at_any_split_give_the_same_calls(size: int) -> None:
    parser = ToolCallParser()
    pieces = []
    for i in range(0, len(TWO_CALLS), size):
        pieces += parser.feed(TWO_CALLS[i : i + size])
    pieces += parser.finish()
    starts = [p for p in pieces if isinstance(p, CallStart)]
    assert [(s.index, s.name) for s in starts] == [(0, "get_weather"), (1, "add")]
    for index in (0, 1):
        text = "".join(p.text for p in pieces if isinstance(p, CallArguments) and p.index == index)
        assert text == parse_all(TWO_CALLS).calls[index].arguments
    # Each call is announced before any of its arguments.
    first_args = next(i for i, p in enumerate(pieces) if isinstance(p, CallArguments))
    assert isinstance(pieces[first_args - 1], CallStart)
    assert not any(isinstance(p, Text) for p in pieces)


@pytest.mark.parametrize("text", ["Hello there", "  <b>bold</b>", "<tool", "", "\n\n"])
def test_text_stays_text(text: str) -> None:
    parser = ToolCallParser()
    pieces = [*parser.feed(text[:3]), *parser.feed(text[3:]), *parser.finish()]
    assert "".join(p.text for p in pieces if isinstance(p, Text)) == text
    assert parser.calls == [] and parser.content == text


def test_a_call_cut_short_keeps_what_came() -> None:
    parsed = parse_all('<tool_call>{"name": "f", "arguments": {"a": "xy')
    assert [(c.name, c.arguments, c.complete) for c in parsed.calls] == [("f", '{"a": "xy', False)]


# --- the chat format -------------------------------------------------------------------


async def chat_format(**fields: Any) -> ChatFormat:
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )
    fmt = ChatFormat(body, "r1", inline_renderer())
    fmt.validate(Limits())
    await fmt.prompts(fake_info("m"))
    fmt.begin(1700)
    return fmt


def events(text: str, reason: FinishReason, size: int = 4) -> list[TokenEvent]:
    out = [TokenEvent("a", text=text[i : i + size]) for i in range(0, len(text), size)]
    out.append(TokenEvent("a", text="", finish_reason=reason))
    return out


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


async def test_a_collected_reply_of_calls() -> None:
    fmt = await chat_format(
        tools=[{"type": "function", "function": WEATHER}], tool_choice="required"
    )
    for event in events(CALL, FinishReason.STOP):
        fmt.add(0, event)
    wire = json.loads(fmt.response(fmt.collected_choices(), _usage()).model_dump_json())
    choice = wire["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None and "function_call" not in choice["message"]
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


async def test_a_reply_cut_in_its_last_call_keeps_the_whole_calls_before_it() -> None:
    fmt = await chat_format(tools=[{"type": "function", "function": WEATHER}])
    for event in events(CALL + CALL[:45], FinishReason.LENGTH):
        fmt.add(0, event)
    (choice,) = fmt.collected_choices()
    assert choice.finish_reason == "length"
    (call,) = choice.message.tool_calls or []
    assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_legacy_functions_answer_with_function_call() -> None:
    fmt = await chat_format(functions=[WEATHER], function_call={"name": "get_weather"})
    for event in events(CALL, FinishReason.STOP):
        fmt.add(0, event)
    (choice,) = fmt.collected_choices()
    wire = json.loads(choice.model_dump_json())
    assert wire["finish_reason"] == "function_call"
    assert wire["message"] == {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }


async def test_auto_text_is_content_and_a_cut_call_finishes_with_length() -> None:
    fmt = await chat_format(n=2, temperature=1, tools=[{"type": "function", "function": WEATHER}])
    for event in events("It is sunny.", FinishReason.STOP):
        fmt.add(0, event)
    for event in events(CALL[:60], FinishReason.LENGTH):
        fmt.add(1, event)
    text, cut = fmt.collected_choices()
    assert (text.message.content, text.finish_reason) == ("It is sunny.", "stop")
    assert "tool_calls" not in json.loads(text.message.model_dump_json())
    assert cut.finish_reason == "length" and cut.message.content is None
    assert cut.message.tool_calls[0].function.arguments == '{"city": "P'  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_cut_before_its_name_is_text_streamed_or_not(stream: bool) -> None:
    fmt = await chat_format(tools=[{"type": "function", "function": WEATHER}], stream=stream)
    texts = []
    for event in events(CALL[:30], FinishReason.LENGTH):
        fmt.add(0, event)
        for chunk in fmt.chunks(0, event):
            delta = json.loads(chunk.model_dump_json())["choices"][0]["delta"]  # type: ignore[union-attr]
            texts.append(delta.get("content", ""))
    (choice,) = fmt.collected_choices()
    assert choice.message.content == "".join(texts) == CALL[:30]


def _usage() -> Any:
    from lmaas.protocol.openai import Usage

    return Usage.of(1, 1)


async def test_stream_deltas_accumulate_into_the_calls() -> None:
    tools = [{"type": "function", "function": WEATHER}]
    fmt = await chat_format(tools=tools, tool_choice="required", stream=True)
    (opening,) = fmt.opening_chunks()
    assert json.loads(opening.model_dump_json())["choices"][0]["delta"] == {"role": "assistant"}
    chunks = [c for e in events(CALL + "\n" + CALL, FinishReason.STOP, 3) for c in fmt.chunks(0, e)]
    deltas = [json.loads(c.model_dump_json())["choices"][0] for c in chunks]  # type: ignore[union-attr]
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas[:-1]:
        (piece,) = d["delta"]["tool_calls"]
        if "id" in piece:  # a call's first delta: its id, type and name, empty arguments
            assert piece["index"] not in calls and piece["type"] == "function"
            calls[piece["index"]] = {"id": piece["id"], **piece["function"]}
        else:
            assert set(piece) == {"index", "function"} and set(piece["function"]) == {"arguments"}
            calls[piece["index"]]["arguments"] += piece["function"]["arguments"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": "Paris"})
    ] * 2
    assert deltas[-1]["delta"] == {} and deltas[-1]["finish_reason"] == "tool_calls"


async def test_stream_text_in_auto_and_legacy_deltas() -> None:
    fmt = await chat_format(tools=[{"type": "function", "function": WEATHER}], stream=True)
    out = [c for e in events("Sunny", FinishReason.STOP, 2) for c in fmt.chunks(0, e)]
    wires = [json.loads(c.model_dump_json()) for c in out]  # type: ignore[union-attr]
    assert "".join(w["choices"][0]["delta"].get("content", "") for w in wires) == "Sunny"
    assert wires[-1]["choices"][0]["finish_reason"] == "stop"
    legacy = await chat_format(functions=[WEATHER], stream=True)
    out = [c for e in events(CALL, FinishReason.STOP) for c in legacy.chunks(0, e)]
    first = json.loads(out[0].model_dump_json())["choices"][0]["delta"]  # type: ignore[union-attr]
    assert first == {"function_call": {"name": "get_weather", "arguments": ""}}
    last = json.loads(out[-1].model_dump_json())["choices"][0]  # type: ignore[union-attr]
    assert last["finish_reason"] == "function_call"


async def test_the_constraint_goes_to_the_engine_only_when_calls_may_come() -> None:
    tools = [{"type": "function", "function": WEATHER}]
    spec = (await chat_format(tools=tools)).constrain(SamplingParams()).tool_calls
    assert spec is not None and spec.allow_text and spec.parallel
    none = await chat_format(tools=tools, tool_choice="none")
    assert none.constrain(SamplingParams()).tool_calls is None
    assert (await chat_format()).constrain(SamplingParams()).tool_calls is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"use_beam_search": True}, "use_beam_search"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_what_cannot_go_with_tools(fields: dict[str, Any], param: str) -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": WEATHER}],
            **fields,
        }
    )
    with pytest.raises(InvalidRequestError) as err:
        ChatFormat(body, "r", inline_renderer()).validate(Limits())
    assert err.value.param == param


# --- the constraint in each backend ----------------------------------------------------

SPEC = ToolCallSpec(
    call_schema={
        "type": "object",
        "properties": {
            "name": {"const": "f"},
            "arguments": {
                "type": "object",
                "properties": {"a": {"type": "integer"}},
                "required": ["a"],
            },
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
)


def test_the_gbnf_grammar_wraps_the_converted_call() -> None:
    required = tool_call_grammar(SPEC.model_dump_json())
    assert "root ::= lmaas-ws lmaas-calls" in required and "lmaas-text" not in required
    assert 'lmaas-call ::= "<tool_call>" "\\n"? call-json "\\n"? "</tool_call>"' in required
    assert "lmaas-calls ::= lmaas-call\n" in required
    auto = tool_call_grammar(
        SPEC.model_copy(update={"allow_text": True, "parallel": True}).model_dump_json()
    )
    assert "root ::= lmaas-ws (lmaas-calls | lmaas-text)" in auto
    assert "lmaas-calls ::= lmaas-call ([ \\t\\n]{0,2} lmaas-call)*" in auto
    assert gbnf_literal('a"\\\n') == '"a\\"\\\\\\n"'


def _walk(spec: ToolCallSpec, seed: int) -> str:
    """Random logits over a toy vocabulary of single characters, through the automaton."""
    chars = sorted(set('<tool_call>/{}":, \nnamefrgus0123456789hi!x'))
    pieces = {c.encode(): [i] for i, c in enumerate(chars)}
    eos = len(chars)
    guides = Guides(lambda: pieces, eos, wait_s=60)
    sampler = make_sampler(SamplingParams(seed=seed, tool_calls=spec), eos + 1, guides)
    rng = np.random.default_rng(seed)
    out = ""
    for _ in range(80):
        token = sample(sampler, rng.normal(size=eos + 1).astype(np.float32) * 3)
        if token == eos:
            return out
        out += chars[token]
    return out + "<cut>"


def test_the_transformers_automaton_forces_calls() -> None:
    ended = 0
    for seed in range(6):
        out = _walk(SPEC, seed)
        if out.endswith("<cut>"):
            continue
        ended += 1
        parsed = parse_all(out)
        assert len(parsed.calls) == 1 and parsed.calls[0].complete, out
        assert parsed.calls[0].name == "f" and isinstance(
            json.loads(parsed.calls[0].arguments)["a"], int
        )
    assert ended >= 2


def test_the_transformers_automaton_in_auto_allows_text_but_no_stray_markup() -> None:
    spec = SPEC.model_copy(update={"allow_text": True})
    outs = [_walk(spec, seed) for seed in range(8)]
    for out in outs:
        parsed = parse_all(out.removesuffix("<cut>"))
        if parsed.calls:
            assert parsed.calls[0].name == "f"
        else:
            assert not out.lstrip(" \n").startswith("<"), out
    regex = tool_call_regex(spec)
    assert regex.startswith("[ \\t\\n]{0,4}(?:<tool_call>") and "[^< \\t\\n]" in regex
