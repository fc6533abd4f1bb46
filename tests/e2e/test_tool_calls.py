"""Tool calling against a real server with the shipped SmolLM2 (llama.cpp), through the clients
people use: the openai SDK (required, named, auto, streamed deltas the SDK accumulates,
parallel calls, a tool result sent back, the legacy functions) and LangChain (``bind_tools``,
``with_structured_output(method="function_calling")``).

The model is tiny, so what is asserted is the structure the grammar guarantees: a call names a
given function and its arguments parse and follow the function's schema, whatever they say.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.bad_inputs import expect_error
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess

pytestmark = pytest.mark.e2e

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
ADD_PARAMETERS = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": WEATHER_PARAMETERS,
}
ADD = {"name": "add", "description": "Add two integers", "parameters": ADD_PARAMETERS}
TOOLS: Any = [{"type": "function", "function": WEATHER}, {"type": "function", "function": ADD}]
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "add": ADD_PARAMETERS}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def check_call(call: Any, names: set[str] | None = None) -> dict[str, Any]:
    """A complete call: its id, type, a known name and arguments that follow its schema."""
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name in (names or set(SCHEMAS))
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return dict(arguments)


def test_required_makes_one_call_with_valid_arguments(sdk: openai.OpenAI) -> None:
    r = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    check_call(call)


def test_a_named_function_is_the_one_called(sdk: openai.OpenAI) -> None:
    r = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}},
        max_tokens=60,
        temperature=0,
    )
    (call,) = r.choices[0].message.tool_calls or []
    arguments = check_call(call, {"add"})
    assert isinstance(arguments["a"], int) and isinstance(arguments["b"], int)
    assert r.choices[0].finish_reason == "tool_calls"


def test_auto_answers_in_text_or_with_calls(sdk: openai.OpenAI) -> None:
    for question in ("What is the capital of France?", "What is the weather in Paris?"):
        r = sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": question}],
            tools=TOOLS,
            max_tokens=40,
            temperature=0,
        )
        message = r.choices[0].message
        if message.tool_calls:
            assert message.content is None
            calls = message.tool_calls
            if r.choices[0].finish_reason == "length" and len(calls) == 1:
                calls = []  # its only call was cut by max_tokens: nothing whole to check
            for call in calls:  # after whole calls, one cut by max_tokens is left out
                check_call(call)
        else:
            assert message.content and not message.content.lstrip().startswith("<")
            assert r.choices[0].finish_reason in ("stop", "length")


def test_n_choices_each_make_a_call(sdk: openai.OpenAI) -> None:
    r = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        n=2,
        temperature=1.0,
        seed=3,
        max_tokens=60,
    )
    assert [c.index for c in r.choices] == [0, 1]
    for choice in r.choices:
        if choice.finish_reason == "tool_calls":
            (call,) = choice.message.tool_calls or []
            check_call(call)
        else:  # sampled at temperature 1, a string argument may run to the token budget
            assert choice.finish_reason == "length" and choice.message.tool_calls


def test_streamed_deltas_accumulate_into_the_same_call(sdk: openai.OpenAI) -> None:
    fields: Any = {
        "model": MODEL,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "max_tokens": 60,
        "temperature": 0,
    }
    whole = sdk.chat.completions.create(**fields)
    raw = list(sdk.chat.completions.create(**fields, stream=True))
    first = next(c.choices[0].delta.tool_calls[0] for c in raw if c.choices[0].delta.tool_calls)
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function is not None and first.function.name == "get_weather"
    assert raw[-1].choices[0].finish_reason == "tool_calls"
    # The SDK's own accumulation of the deltas.
    with sdk.chat.completions.stream(**fields) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    check_call(call, {"get_weather"})
    (expected,) = whole.choices[0].message.tool_calls or []
    assert call.function.arguments == expected.function.arguments  # greedy: the same text
    assert final.choices[0].finish_reason == "tool_calls"


def test_parallel_calls_in_one_reply(sdk: openai.OpenAI) -> None:
    r = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris and in London?"}],
        tools=TOOLS,
        tool_choice="required",
        max_tokens=120,
        temperature=0,
    )
    calls = r.choices[0].message.tool_calls or []
    # A reply cut by max_tokens may end in a call whose arguments are unfinished.
    complete = calls if r.choices[0].finish_reason == "tool_calls" else calls[:-1]
    assert len(complete) >= 2, r
    for call in complete:
        check_call(call)
    assert len({c.id for c in calls}) == len(calls)


def test_a_tool_result_goes_back_into_the_prompt(sdk: openai.OpenAI) -> None:
    first = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
    )
    (call,) = first.choices[0].message.tool_calls or []
    turn = first.choices[0].message.model_dump(exclude_none=True)

    def answer(result: str) -> Any:
        messages = [*ASK, turn, {"role": "tool", "tool_call_id": call.id, "content": result}]
        return sdk.chat.completions.create(
            model=MODEL, messages=messages, tools=TOOLS, max_tokens=8, temperature=0
        )

    short, long = (
        answer("18"),
        answer("18 degrees Celsius, sunny, with a light breeze from the west"),
    )
    assert short.choices[0].message.content or short.choices[0].message.tool_calls
    assert short.usage is not None and long.usage is not None
    assert long.usage.prompt_tokens > short.usage.prompt_tokens + 8
    # The call itself is in the prompt too: without it, the prompt is shorter.
    bare = sdk.chat.completions.create(
        model=MODEL,
        messages=[*ASK, {"role": "assistant", "content": ""}, {"role": "user", "content": "18"}],
        tools=TOOLS,
        max_tokens=8,
        temperature=0,
    )
    assert bare.usage is not None and bare.usage.prompt_tokens < short.usage.prompt_tokens


def test_legacy_functions_and_function_call(sdk: openai.OpenAI, server: ServerProcess) -> None:
    body = {
        "model": MODEL,
        "messages": ASK,
        "functions": [WEATHER],
        "function_call": {"name": "get_weather"},
        "max_tokens": 60,
        "temperature": 0,
    }
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["content"] is None and "tool_calls" not in choice["message"]
    assert choice["message"]["function_call"]["name"] == "get_weather"
    jsonschema.validate(
        json.loads(choice["message"]["function_call"]["arguments"]), WEATHER_PARAMETERS
    )
    # A function result (role "function") renders back, as a tool's does.
    follow = [
        *ASK,
        {"role": "assistant", "content": None, "function_call": choice["message"]["function_call"]},
        {"role": "function", "name": "get_weather", "content": "18 C"},
    ]
    again = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={**body, "messages": follow, "function_call": "none", "max_tokens": 8},
        timeout=120,
    )
    assert again.status_code == 200, again.text
    assert again.json()["choices"][0]["message"]["content"]


def test_an_unknown_tool_choice_is_a_400_naming_it(server: ServerProcess) -> None:
    body = {
        "model": MODEL,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
    }
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert "get_time" in expect_error(r, 400, "tool_choice")


# --- LangChain -------------------------------------------------------------------------


def test_langchain_bind_tools_and_structured_output(server: ServerProcess) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.tools import tool
    from pydantic import BaseModel, Field

    llm = langchain_openai.ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key="unused",
        model=MODEL,
        temperature=0,
        max_tokens=60,
        max_retries=0,
    )

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    bound = llm.bind_tools([get_weather], tool_choice="required", parallel_tool_calls=False)
    message = bound.invoke("What is the weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    assert call["id"].startswith("call_")
    # Streamed, the chunks add up to the same call.
    chunks = list(bound.stream("What is the weather in Paris?"))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert [c["name"] for c in total.tool_calls] == ["get_weather"]

    class City(BaseModel):
        """A city and how many people live there."""

        name: str = Field(description="the city's name", max_length=40)
        population: int

    city = llm.with_structured_output(City, method="function_calling").invoke("Describe Paris.")
    assert isinstance(city, City) and isinstance(city.population, int)
