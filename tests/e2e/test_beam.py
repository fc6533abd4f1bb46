"""Beam search against the real server and model: beams, greedy equivalence, isolation, aborts."""

from __future__ import annotations

import re
import threading
from typing import Any

import httpx
import pytest

from tests.bad_inputs import check_error_envelope
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{server.url}{path}", json={"model": MODEL, **body}, timeout=180)
    assert r.status_code == 200, r.text
    return dict(r.json())


def metric(server: ServerProcess, name: str) -> float:
    """The sample of ``name`` for the model; a missing sample fails (it is not zero)."""
    text = httpx.get(f"{server.url}/metrics").text
    m = re.search(
        r"^" + re.escape(name) + r'\{model="' + re.escape(MODEL) + r'"\} (\S+)$', text, re.M
    )
    assert m, f"no {name} sample for {MODEL} in /metrics"
    return float(m.group(1))


def test_beams_are_distinct_ranked_and_scored(server: ServerProcess) -> None:
    body = {
        "prompt": "The capital of France is",
        "max_tokens": 8,
        "use_beam_search": True,
        "beam_width": 4,
        "n": 4,
        "logprobs": 2,
    }
    r = post(server, "/v1/completions", body)
    choices = r["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert len({c["text"] for c in choices}) == 4
    scores = [c["score"] for c in choices]
    assert scores == sorted(scores, reverse=True)
    lengths = []
    for c in choices:
        lp = c["logprobs"]
        assert "".join(lp["tokens"]) == c["text"]
        assert all(len(top) == 2 for top in lp["top_logprobs"])
        total = sum(lp["token_logprobs"])
        n_tokens = len(lp["tokens"])
        lengths.append(n_tokens)
        if c["finish_reason"] == "length":
            assert n_tokens == 8 and c["cumulative_logprob"] == pytest.approx(total, abs=1e-3)
        else:  # ended by the end-of-text token, whose logprob counts as well
            assert c["cumulative_logprob"] < total
        assert c["score"] == pytest.approx(c["cumulative_logprob"] / max(n_tokens, 1), rel=1e-6)
    assert r["usage"]["completion_tokens"] == sum(lengths)


def test_chat_beams_follow_stop_and_logit_bias(server: ServerProcess) -> None:
    base = {"messages": QUESTION, "max_tokens": 12, "use_beam_search": True, "beam_width": 3}
    plain = post(server, "/v1/chat/completions", {**base, "n": 3})["choices"]
    assert len({c["message"]["content"] for c in plain}) == 3
    stop = post(server, "/v1/chat/completions", {**base, "n": 3, "stop": ["."]})["choices"]
    assert len(stop) == 3
    for c in stop:
        assert "." not in c["message"]["content"]
    # A banned token appears in no beam ("Paris" is one token in this vocabulary).
    paris = 7042
    echo = {"prompt": [paris], "max_tokens": 0, "echo": True}
    assert post(server, "/v1/completions", echo)["choices"][0]["text"] == " Paris"
    body = {"prompt": "The capital of France is", "max_tokens": 4, "use_beam_search": True}
    body |= {"beam_width": 3, "n": 3, "logprobs": 0}
    free = post(server, "/v1/completions", body)["choices"]
    assert any(" Paris" in c["logprobs"]["tokens"] for c in free)
    banned = post(server, "/v1/completions", {**body, "logit_bias": {str(paris): -100}})
    assert all(" Paris" not in c["logprobs"]["tokens"] for c in banned["choices"])


def test_width_one_equals_greedy_token_for_token(server: ServerProcess) -> None:
    # A run to max_tokens: with no hypothesis finished early, width 1 is greedy at any setting.
    greedy = post(
        server,
        "/v1/completions",
        {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0, "logprobs": 0},
    )["choices"][0]
    beam = post(
        server,
        "/v1/completions",
        {
            "prompt": "Once upon a time",
            "max_tokens": 16,
            "use_beam_search": True,
            "beam_width": 1,
            "logprobs": 0,
        },
    )["choices"][0]
    assert beam["logprobs"]["tokens"] == greedy["logprobs"]["tokens"]
    assert beam["text"] == greedy["text"]
    # A reply that ends itself: with early_stopping, width 1 stops where greedy does.
    greedy_chat = post(
        server,
        "/v1/chat/completions",
        {"messages": QUESTION, "max_tokens": 48, "temperature": 0, "logprobs": True},
    )["choices"][0]
    beam_chat = post(
        server,
        "/v1/chat/completions",
        {
            "messages": QUESTION,
            "max_tokens": 48,
            "use_beam_search": True,
            "beam_width": 1,
            "early_stopping": True,
            "logprobs": True,
        },
    )["choices"][0]
    assert [t["bytes"] for t in beam_chat["logprobs"]["content"]] == [
        t["bytes"] for t in greedy_chat["logprobs"]["content"]
    ]
    assert beam_chat["finish_reason"] == greedy_chat["finish_reason"]
    assert beam_chat["message"]["content"] == greedy_chat["message"]["content"]


def count_prompt(start: int) -> str:
    return ", ".join(str(start + k) for k in range(6)) + ","


def greedy_counts(server: ServerProcess, starts: list[int]) -> dict[int, str]:
    """Greedy completions of several counting prompts, sent at once."""
    out: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(start: int) -> None:
        try:
            body = {"prompt": count_prompt(start), "max_tokens": 12, "temperature": 0}
            out[start] = post(server, "/v1/completions", body)["choices"][0]["text"]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in starts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return out


def test_beam_search_beside_normal_requests_changes_nothing(server: ServerProcess) -> None:
    starts = [100, 250, 370]
    alone = greedy_counts(server, starts)
    assert sorted(alone) == starts
    for start, text in alone.items():
        assert [int(x) for x in re.findall(r"\d+", text)][:2] == [start + 6, start + 7]
    # Long enough (end-of-text banned) to overlap the three short requests for sure.
    beam_body = {"prompt": "Once upon a time", "max_tokens": 48, "use_beam_search": True}
    beam_body |= {"beam_width": 4, "n": 2, "logit_bias": {"0": -100, "2": -100}}
    beams_alone = post(server, "/v1/completions", beam_body)["choices"]
    result: dict[str, Any] = {}
    beam_thread = threading.Thread(
        target=lambda: result.update(post(server, "/v1/completions", beam_body))
    )
    beam_thread.start()
    wait_until(lambda: metric(server, "lmaas_num_requests_running") >= 4, 60, 0.05, "beams to run")
    beside = greedy_counts(server, starts)
    beam_thread.join(timeout=300)
    assert beside == alone
    # The beams are not compared token for token: llama.cpp's logits shift in the last digits
    # with the shape of the batch and where cells sit in the cache (its CPU flash attention
    # sums in half precision), which reorders near-tied beams. They are well formed.
    assert len(beams_alone) == 2
    for c in result["choices"]:
        assert c["finish_reason"] == "length" and c["text"]
    assert result["usage"]["completion_tokens"] == 2 * 48
    assert result["choices"][0]["score"] >= result["choices"][1]["score"]


def test_disconnect_mid_search_frees_all_its_slots(server: ServerProcess) -> None:
    wait_until(lambda: metric(server, "lmaas_num_requests_running") == 0, 60, what="idle")
    outcome: list[BaseException] = []

    def give_up() -> None:
        try:
            httpx.post(
                f"{server.url}/v1/completions",
                timeout=httpx.Timeout(60, read=4),
                json={
                    "model": MODEL,
                    "prompt": "Tell me a long story.",
                    "max_tokens": 1500,
                    "ignore_eos": True,
                    "use_beam_search": True,
                    "beam_width": 4,
                },
            )
        except BaseException as exc:
            outcome.append(exc)

    client = threading.Thread(target=give_up)
    client.start()
    # All four beams hold a slot while the search runs.
    wait_until(
        lambda: metric(server, "lmaas_num_requests_running") == 4, 30, 0.05, "the beams to run"
    )
    client.join(timeout=60)
    assert outcome and isinstance(outcome[0], httpx.ReadTimeout)
    wait_until(
        lambda: metric(server, "lmaas_num_requests_running") == 0,
        30,
        what="the abandoned search to leave the batch",
    )
    # The freed slots serve the next request at once.
    body = {"prompt": count_prompt(10), "max_tokens": 4, "temperature": 0}
    assert post(server, "/v1/completions", body)["choices"][0]["text"]


def test_beams_that_cannot_fit_the_kv_cache_are_refused(server: ServerProcess) -> None:
    r = httpx.post(
        f"{server.url}/v1/completions",
        json={
            "model": MODEL,
            "prompt": "Hello",
            "max_tokens": 2000,
            "use_beam_search": True,
            "beam_width": 8,
        },
        timeout=60,
    )
    assert r.status_code == 400, r.text
    err = check_error_envelope(r.json())
    assert err["param"] == "max_tokens" and "beam_width" in err["message"]
