"""The real thing: `lmaas serve` with the shipped SmolLM2 model, driven by the openai SDK."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.bad_inputs import BEAM_CASES, CASES, HOSTILE_CASES, check_error_envelope, encode
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def chat_text(sdk: openai.OpenAI, **kwargs: Any) -> str:
    r = sdk.chat.completions.create(model=MODEL, messages=QUESTION, **kwargs)
    return r.choices[0].message.content or ""


def metric(server: ServerProcess, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics").text
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(\{[^}]*\})?")
    m = re.search(r"^" + pattern + r" ([0-9.e+-]+)$", text, re.M)
    assert m, f"no {name}{{{labels}}} sample in /metrics"  # missing is not zero
    return float(m.group(1))


def test_chat_completion_with_sdk(sdk: openai.OpenAI) -> None:
    r = sdk.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.prompt_tokens > 5
    assert 0 < r.usage.completion_tokens <= 12


def test_no_max_tokens_uses_the_rest_of_the_context(sdk: openai.OpenAI) -> None:
    # A strong bias on the end-of-turn token ends the reply at once; what matters is that a
    # request without max_tokens is admitted (its budget is the remaining context).
    eot = 2  # <|im_end|> in SmolLM2's vocabulary
    r = sdk.chat.completions.create(model=MODEL, messages=QUESTION, logit_bias={str(eot): 100})
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == ""
    assert r.usage is not None and r.usage.completion_tokens == 0


def test_stream_equals_non_stream_for_greedy(sdk: openai.OpenAI) -> None:
    full = chat_text(sdk, max_tokens=16, temperature=0)
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts: list[str] = []
    usage = None
    finish = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(parts) == full
    assert usage is not None and usage.completion_tokens == 16 and finish == "length"


def test_completions_echo_with_prompt_logprobs(sdk: openai.OpenAI) -> None:
    prompt = "The quick brown fox jumps over the lazy dog"
    r = sdk.completions.create(
        model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=3, temperature=0
    )
    choice = r.choices[0]
    assert choice.text == prompt
    lp = choice.logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.tokens is not None
    assert "".join(lp.tokens) == prompt
    assert lp.token_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    assert r.usage is not None and len(lp.tokens) == r.usage.prompt_tokens
    # A fluent sentence: the model finds most of its tokens likely.
    assert sum(lp.token_logprobs[1:]) / (len(lp.tokens) - 1) > -6  # type: ignore[operator]


def test_greedy_token_is_the_top_logprob(sdk: openai.OpenAI) -> None:
    r = sdk.completions.create(
        model=MODEL, prompt="One, two, three,", max_tokens=3, logprobs=5, temperature=0
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.top_logprobs and lp.token_logprobs
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert top is not None and len(top) == 5
        assert chosen == pytest.approx(max(top.values()), abs=1e-4)


def test_chat_logprobs(sdk: openai.OpenAI) -> None:
    r = sdk.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 4
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_n_two_and_seed_reproducibility(sdk: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"max_tokens": 12, "temperature": 1.0, "seed": 1234, "n": 2}
    a = sdk.chat.completions.create(model=MODEL, messages=QUESTION, **kwargs)
    b = sdk.chat.completions.create(model=MODEL, messages=QUESTION, **kwargs)
    texts_a = [c.message.content for c in a.choices]
    assert len(texts_a) == 2 and all(texts_a)
    assert texts_a == [c.message.content for c in b.choices]
    other = sdk.chat.completions.create(
        model=MODEL, messages=QUESTION, **{**kwargs, "seed": 99, "n": 1}
    )
    # A different seed gives a different sample (12 sampled tokens at temperature 1).
    assert other.choices[0].message.content != texts_a[0]


def test_stop_string_cuts_and_is_not_echoed(sdk: openai.OpenAI) -> None:
    full = chat_text(sdk, max_tokens=24, temperature=0)
    words = full.split()
    assert len(words) >= 4, full
    stop = words[3]
    cut = sdk.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0, stop=[stop]
    )
    text = cut.choices[0].message.content or ""
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in text and full.startswith(text) and text == full[: full.index(stop)]


def test_json_schema_output_parses(sdk: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "population": {"type": "integer"},
            "kind": {"enum": ["capital", "town"]},
        },
        "required": ["city", "population", "kind"],
        "additionalProperties": False,
    }
    r = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        max_tokens=80,
        temperature=0.7,
        seed=7,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    value = json.loads(r.choices[0].message.content or "")
    jsonschema.validate(value, schema)


def test_sixteen_concurrent_streams_without_cross_talk(server: ServerProcess) -> None:
    """Each stream counts on from its own starting number; mixed-up sequences would not."""
    starts = [100 * (i + 1) + 7 * i for i in range(16)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(start: int) -> None:
        try:
            prompt = ", ".join(str(start + k) for k in range(6)) + ","
            text = ""
            with httpx.stream(
                "POST",
                f"{server.url}/v1/completions",
                timeout=120,
                json={
                    "model": MODEL,
                    "prompt": prompt,
                    "max_tokens": 12,
                    "temperature": 0,
                    "stream": True,
                },
            ) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        text += json.loads(line[6:])["choices"][0]["text"]
            results[start] = text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in starts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    assert len(results) == 16
    for start, text in results.items():
        numbers = [int(x) for x in re.findall(r"\d+", text)]
        assert numbers[:2] == [start + 6, start + 7], (start, text)
    assert len(set(results.values())) == 16


def test_client_disconnect_frees_its_slot(server: ServerProcess) -> None:
    with httpx.stream(
        "POST",
        f"{server.url}/v1/completions",
        timeout=60,
        json={
            "model": MODEL,
            "prompt": "Tell me a long story.",
            "max_tokens": 2000,
            "ignore_eos": True,
            "stream": True,
        },
    ) as r:
        got = 0
        # Keep the iterator referenced: a collected httpx line iterator closes the response.
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                got += 1
                if got == 3:
                    break
        wait_until(
            lambda: metric(server, "lmaas_num_requests_running", f'model="{MODEL}"') == 1,
            30,
            what="the request to be running",
        )
        del lines
    # The connection is closed now; the worker must drop the sequence long before 2000 tokens.
    wait_until(
        lambda: metric(server, "lmaas_num_requests_running", f'model="{MODEL}"') == 0,
        30,
        what="the aborted request to leave the batch",
    )
    tokens = metric(server, "lmaas_generation_tokens_total", f'model="{MODEL}"')
    assert tokens < 2000


def test_non_streaming_client_that_gives_up_frees_its_slot(server: ServerProcess) -> None:
    before = metric(server, "lmaas_generation_tokens_total", f'model="{MODEL}"')
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.url}/v1/completions",
            timeout=httpx.Timeout(60, read=3),
            json={
                "model": MODEL,
                "prompt": "Tell me a long story.",
                "max_tokens": 2000,
                "ignore_eos": True,
            },
        )
    wait_until(
        lambda: metric(server, "lmaas_num_requests_running", f'model="{MODEL}"') == 0,
        30,
        what="the abandoned request to leave the batch",
    )
    generated = metric(server, "lmaas_generation_tokens_total", f'model="{MODEL}"') - before
    assert generated < 2000


@pytest.fixture(scope="module")
def workers(server: ServerProcess) -> set[int]:
    """The worker processes serving MODEL when the bad inputs begin."""
    pids = server.worker_pids(MODEL)
    assert len(pids) == 1, pids
    return pids


def assert_worker_unharmed(server: ServerProcess, pids: set[int]) -> None:
    """The same worker process still serves MODEL, never restarted, and answers a request."""
    assert server.worker_pids(MODEL) == pids
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["models"][MODEL]["replicas"][0]["restarts"] == 0, ready
    body = {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 1, "temperature": 0}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1, r.text


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "param"),
    [c[1:] for c in CASES + BEAM_CASES + HOSTILE_CASES],
    ids=[c[0] for c in CASES + BEAM_CASES + HOSTILE_CASES],
)
def test_bad_input_table(
    server: ServerProcess,
    workers: set[int],
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    param: str | None,
) -> None:
    r = httpx.post(
        f"{server.url}{path}",
        content=encode(body, MODEL),
        headers={"content-type": "application/json", **headers},
        timeout=60,
    )
    assert r.status_code == status, r.text
    err = check_error_envelope(r.json())
    assert err["param"] == param, err
    assert_worker_unharmed(server, workers)


def test_server_still_healthy_after_bad_inputs(server: ServerProcess, sdk: openai.OpenAI) -> None:
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["models"][MODEL]["replicas"][0]["restarts"] == 0
    assert chat_text(sdk, max_tokens=2, temperature=0)


def test_metrics_and_openapi(server: ServerProcess) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "lmaas_requests_total",
        "lmaas_time_to_first_token_seconds_bucket",
        "lmaas_time_per_output_token_seconds_bucket",
        "lmaas_e2e_request_latency_seconds_bucket",
        "lmaas_request_queue_time_seconds_bucket",
        "lmaas_num_requests_running",
        "lmaas_num_requests_waiting",
        "lmaas_prompt_tokens_total",
        "lmaas_generation_tokens_total",
    ):
        assert name in text, name
    assert metric(server, "lmaas_prompt_tokens_total", f'model="{MODEL}"') > 0
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(spec["paths"])
    models = httpx.get(f"{server.url}/v1/models").json()
    # The chat model and the shipped embedding model.
    assert {m["id"] for m in models["data"]} == {MODEL, "all-minilm-l6-v2"}
