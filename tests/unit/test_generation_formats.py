"""The chat and completions formats of the generation pipeline: events in, the exact pydantic
response (or stream chunks) out, and the usage the shared run adds up."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from lmaas.config import Limits
from lmaas.errors import InvalidRequestError
from lmaas.gateway.serving import sse
from lmaas.gateway.serving.chat import ChatFormat
from lmaas.gateway.serving.common import RequestTiming
from lmaas.gateway.serving.completions import CompletionFormat
from lmaas.gateway.serving.generation import GenerationRun, Prompt
from lmaas.protocol.engine import BeamResult, FinishReason, TokenEvent, TokenLogprob
from lmaas.protocol.openai import (
    AssistantMessage,
    ChatChoice,
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprob,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    TopLogprob,
    Usage,
)
from lmaas.telemetry.metrics import Metrics
from tests.fakes import fake_info
from tests.fakes_templates import inline_renderer

MESSAGES = [{"role": "user", "content": "hi"}]


def lp(token: str, logprob: float | None, top: float | None = None) -> TokenLogprob:
    alternatives = [] if top is None else [(7, token.upper(), list(token.upper().encode()), top)]
    return TokenLogprob(1, token, list(token.encode()), logprob, alternatives)


async def chat(**fields: Any) -> ChatFormat:
    fmt = ChatFormat(
        ChatCompletionRequest(model="m", messages=MESSAGES, **fields), "r1", inline_renderer()
    )
    fmt.validate(Limits())
    await fmt.prompts(fake_info("m"))
    fmt.begin(1700)
    return fmt


async def completion(**fields: Any) -> CompletionFormat:
    fmt = CompletionFormat(CompletionRequest(model="m", **fields), "r2")
    fmt.validate(Limits())
    await fmt.prompts(fake_info("m"))
    fmt.begin(1700)
    return fmt


async def test_chat_collects_each_choice_with_its_logprobs() -> None:
    fmt = await chat(n=2, temperature=1, logprobs=True, top_logprobs=1)
    fmt.add(1, TokenEvent("b", text=" x", logprobs=[lp(" x", -0.25, -1.0)]))
    fmt.add(0, TokenEvent("a", text=" y", finish_reason=FinishReason.STOP))
    fmt.add(1, TokenEvent("b", text=" z", finish_reason=FinishReason.LENGTH))
    body = fmt.response(fmt.collected_choices(), Usage.of(3, 3))
    x = ChatLogprob(
        token=" x",
        logprob=-0.25,
        bytes=[32, 120],
        top_logprobs=[TopLogprob(token=" X", logprob=-1.0, bytes=[32, 88])],
    )
    assert body == ChatCompletion(
        id="chatcmpl-r1",
        created=1700,
        model="m",
        choices=[
            ChatChoice(
                index=0,
                message=AssistantMessage(content=" y"),
                logprobs=ChatChoiceLogprobs(content=[]),
                finish_reason="stop",
            ),
            ChatChoice(
                index=1,
                message=AssistantMessage(content=" x z"),
                logprobs=ChatChoiceLogprobs(content=[x]),
                finish_reason="length",
            ),
        ],
        usage=Usage.of(3, 3),
    )
    # Beam-only fields and the fingerprint are left out of the JSON, not sent as null.
    wire = json.loads(body.model_dump_json())
    assert set(wire) == {"id", "object", "created", "model", "choices", "usage"}
    assert set(wire["choices"][0]) == {"index", "message", "logprobs", "finish_reason"}


async def test_chat_stream_opens_each_choice_and_closes_it_with_an_empty_delta() -> None:
    fmt = await chat(n=2, temperature=1, stream=True, stream_options={"include_usage": True})
    assert fmt.opening_chunks() == [
        ChatCompletionChunk(
            id="chatcmpl-r1",
            created=1700,
            model="m",
            choices=[ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))],
            usage=None,
        )
        for i in (0, 1)
    ]
    chunks = fmt.chunks(1, TokenEvent("b", text=" w", finish_reason=FinishReason.LENGTH))
    expected = [
        ChatChunkChoice(index=1, delta=ChatDelta(content=" w")),
        ChatChunkChoice(index=1, delta=ChatDelta(), finish_reason="length"),
    ]
    models = [
        ChatCompletionChunk(id="chatcmpl-r1", created=1700, model="m", choices=[c], usage=None)
        for c in expected
    ]
    # The text-only chunk comes encoded already (the fast path); the rest as models.
    assert chunks == [sse.model_event(models[0]), models[1]]
    assert fmt.chunks(0, TokenEvent("a")) == []  # nothing new: no chunk
    assert sse.model_event(chunks[1]) == (
        b'data: {"id":"chatcmpl-r1","object":"chat.completion.chunk","created":1700,'
        b'"model":"m","usage":null,"choices":[{"index":1,"delta":{},"logprobs":null,'
        b'"finish_reason":"length"}]}\n\n'
    )
    last = fmt.usage_chunk(Usage.of(2, 5))
    assert json.loads(last.model_dump_json())["choices"] == []
    assert json.loads(last.model_dump_json())["usage"]["total_tokens"] == 7


async def test_chat_stream_without_include_usage_has_no_usage_key() -> None:
    fmt = await chat(stream=True, logprobs=True)
    (chunk,) = fmt.chunks(0, TokenEvent("a", text="", logprobs=[lp("é", -0.5)]))
    wire = json.loads(sse.model_event(chunk)[len(b"data: ") :])
    assert "usage" not in wire
    # A token with logprobs but no text of its own (an incomplete UTF-8 piece) still streams.
    assert wire["choices"][0]["delta"] == {"content": ""}
    assert wire["choices"][0]["logprobs"]["content"][0]["bytes"] == [195, 169]


def test_chat_refuses_top_logprobs_without_logprobs() -> None:
    fmt = ChatFormat(
        ChatCompletionRequest(model="m", messages=MESSAGES, top_logprobs=2), "r", inline_renderer()
    )
    with pytest.raises(InvalidRequestError) as info:
        fmt.validate(Limits())
    assert info.value.param == "top_logprobs"


async def test_chat_prompt_is_the_template_and_keeps_a_rendered_bos() -> None:
    fmt = ChatFormat(ChatCompletionRequest(model="m", messages=MESSAGES), "r", inline_renderer())
    info = fake_info("m").model_copy(update={"chat_template": "<s>{{ messages[0]['content'] }}"})
    assert await fmt.prompts(info) == [Prompt("<s>hi", parse_special=True, add_bos=False)]
    assert fmt.prompt_record() == "<s>hi"


async def test_chat_prompt_adds_the_bos_when_message_content_only_reads_like_one() -> None:
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "<s>hi"}])
    fmt = ChatFormat(body, "r", inline_renderer())
    info = fake_info("m").model_copy(
        update={"chat_template": "{{ messages[0]['content'] }}", "special_tokens": ["<s>"]}
    )
    assert await fmt.prompts(info) == [
        Prompt("<s>hi", parse_special=True, text_spans=((0, 3),), add_bos=True)
    ]


async def test_completion_echo_streams_the_prompt_first_with_offsets_across_both() -> None:
    fmt = await completion(prompt="ab", echo=True, logprobs=0, max_tokens=2, stream=True)
    assert await fmt.prompts(fake_info("m")) == [Prompt("ab", prompt_logprobs=0)]
    first = TokenEvent(
        "a", text="c", logprobs=[lp("c", -0.5)], prompt_logprobs=[lp("a", None), lp("b", -2.0)]
    )
    (chunk,) = fmt.chunks(0, first)
    assert chunk == CompletionChunk(
        id="cmpl-r2",
        created=1700,
        model="m",
        choices=[
            CompletionChoice(
                index=0,
                text="abc",
                logprobs=CompletionLogprobs(
                    tokens=["a", "b", "c"],
                    token_logprobs=[None, -2.0, -0.5],
                    top_logprobs=[None, {}, {}],
                    text_offset=[0, 1, 2],
                ),
                finish_reason=None,
            )
        ],
    )
    (chunk,) = fmt.chunks(0, TokenEvent("a", text="d", logprobs=[lp("d", -0.1)]))
    assert isinstance(chunk, CompletionChunk)
    assert chunk.choices[0].logprobs == CompletionLogprobs(
        tokens=["d"], token_logprobs=[-0.1], top_logprobs=[{}], text_offset=[3]
    )
    (chunk,) = fmt.chunks(0, TokenEvent("a", finish_reason=FinishReason.LENGTH))
    assert isinstance(chunk, CompletionChunk)
    assert (chunk.choices[0].text, chunk.choices[0].finish_reason) == ("", "length")


async def test_completion_collects_echoed_token_ids_as_text_without_logprobs() -> None:
    fmt = await completion(prompt=[[5, 6], [7]], echo=True, n=2, temperature=1)
    # Token-id prompts ask for their tokens back, to echo them as text.
    assert [p.prompt_logprobs for p in await fmt.prompts(fake_info("m"))] == [0, 0]
    for i, prompt in ((0, "ab"), (1, "ab"), (2, "c"), (3, "c")):
        plp = [lp(ch, None) for ch in prompt]
        fmt.add(i, TokenEvent(str(i), text=f" {i}", prompt_logprobs=plp))
        fmt.add(i, TokenEvent(str(i), finish_reason=FinishReason.STOP))
    body = fmt.response(fmt.collected_choices(), Usage.of(3, 4))
    assert body == Completion(
        id="cmpl-r2",
        created=1700,
        model="m",
        choices=[
            CompletionChoice(index=i, text=f"{p} {i}", finish_reason="stop")
            for i, p in enumerate(["ab", "ab", "c", "c"])
        ],
        usage=Usage.of(3, 4),
    )
    assert fmt.prompt_record() == "[[5, 6], [7]]"


async def test_beam_choices_carry_their_scores_and_are_numbered_per_prompt() -> None:
    fmt = await completion(prompt=["a", "b"], n=2, use_beam_search=True, logprobs=0)
    beams = [
        [
            BeamResult([1], f" {p}{j}", FinishReason.LENGTH, -1.0 - j, -0.5 - j, [lp(" x", -1.0)])
            for j in range(2)
        ]
        for p in "ab"
    ]
    body = fmt.beam_response(beams, Usage.of(2, 4))
    wire = json.loads(body.model_dump_json())["choices"]
    assert [(c["index"], c["text"], c["score"]) for c in wire] == [
        (0, " a0", -0.5),
        (1, " a1", -1.5),
        (2, " b0", -0.5),
        (3, " b1", -1.5),
    ]
    assert wire[3]["cumulative_logprob"] == -2.0
    assert wire[3]["logprobs"] == {
        "tokens": [" x"],
        "token_logprobs": [-1.0],
        "top_logprobs": [{}],
        "text_offset": [0],
    }


async def _events(
    items: list[tuple[int, TokenEvent]],
) -> AsyncGenerator[tuple[int, TokenEvent], None]:
    for item in items:
        yield item


async def test_run_counts_each_prompt_once_and_every_choice() -> None:
    fmt = await completion(prompt=["a b", "c"], n=2, temperature=1, max_tokens=3)
    events = [
        (
            i,
            TokenEvent(
                str(i),
                text=" w",
                token_ids=[1],
                # Only a choice's first event need carry the prompt's length.
                prompt_tokens=(2 if i < 2 else 1) if k == 1 else 0,
                completion_tokens=k,
            ),
        )
        for k in (1, 2)
        for i in range(4)
    ]
    timing = RequestTiming(model="m")
    run = GenerationRun(fmt, 2, timing, Metrics())
    body = await run.collect(events[0], _events(events[1:]))
    assert isinstance(body, Completion) and body.usage == Usage.of(3, 8)
    assert (timing.prompt_tokens, timing.completion_tokens, timing.max_choice_tokens) == (3, 8, 2)


async def test_run_stream_ends_with_usage_then_done() -> None:
    fmt = await completion(
        prompt="a", max_tokens=1, stream=True, stream_options={"include_usage": True}
    )
    first = (
        0,
        TokenEvent(
            "a", text=" w", finish_reason=FinishReason.LENGTH, prompt_tokens=1, completion_tokens=1
        ),
    )
    run = GenerationRun(fmt, 1, RequestTiming(model="m"), Metrics())
    frames = [f async for f in run.stream(first, _events([]))]
    assert frames[-1] == sse.DONE
    assert [json.loads(f[len(b"data: ") :])["usage"] for f in frames[:-1]] == [
        None,
        {
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "total_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    ]


TEXTS = [
    "w",
    " w",
    "",
    'say "hi"',
    "back\\slash",
    "new\nline\ttab",
    "\x00\x1f\x7f",
    "é",
    "日本",
    "🙂",
    "\u2028\u2029",
    "</script>",
    '{"choices":[]}',
    "lmaas-text-placeholder-5f0c2a",
]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_text_events_equal_the_model_path_for_any_text(include_usage: bool) -> None:
    opts = {"stream_options": {"include_usage": True}} if include_usage else {}
    for fmt in (
        await chat(n=3, temperature=1, stream=True, **opts),
        await completion(prompt="p", n=3, temperature=1, stream=True, **opts),
    ):
        for index in (0, 2):
            for text in TEXTS:
                fast = fmt.text_event(index, text)
                slow = sse.model_event(fmt.chunk(fmt.text_choice(index, text)))
                assert fast.startswith(b"data: ") and fast.endswith(b"\n\n")
                assert json.loads(fast[6:]) == json.loads(slow[6:]), (index, text)
