"""Evals on a real server and its real job runner, driven by the official `openai` SDK: a
completions run of the shipped model graded with bleu + string_check + perplexity (and the
figures attached to the store version), a jsonl run with cosine and zero-shot label graders,
bad requests, cancel, and `kill -9` of the runner in the middle of a run. One server for the
module."""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sacrebleu

from tests.e2e.admin import new_key
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

EMBEDDING_MODEL = "all-minilm-l6-v2"
ENDED = ("completed", "failed", "canceled")
QUESTIONS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("What color is the sky?", "The sky is blue."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("What do bees make?", "Bees make honey."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("Which animal barks?", "A dog barks."),
]
ITEM_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
CRITERIA = [
    {
        "type": "text_similarity",
        "name": "bleu",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "bleu",
        "pass_threshold": 0.2,
    },
    {
        "type": "string_check",
        "name": "mentions",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "ilike",
    },
    {"type": "perplexity", "name": "answer ppl", "input": "{{item.answer}}"},
]
MESSAGES = {
    "type": "template",
    "template": [
        {"role": "system", "content": "Answer in one short sentence."},
        {"role": "user", "content": "{{item.question}}"},
    ],
}


class Env:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.admin = new_key(home, "admin")
        self.user = new_key(home, "inference")
        self.server = ServerProcess(home, env={"LMAAS_JOBS__LEASE_SECONDS": "4"})
        self.server.wait_ready()
        self.sdk = openai.OpenAI(base_url=f"{self.server.url}/v1", api_key=self.user, max_retries=0)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.user}"}
        return httpx.post(self.server.url + path, json=body, headers=headers, timeout=60)

    def admin_get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.admin}"}
        r = httpx.get(self.server.url + path, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def eval_file(self, n: int = len(QUESTIONS)) -> str:
        lines = [
            {"item": {"question": q, "answer": a}}
            for q, a in (QUESTIONS * (n // len(QUESTIONS) + 1))[:n]
        ]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return self.sdk.files.create(file=("items.jsonl", data), purpose="evals").id

    def new_eval(self, criteria: list[dict[str, Any]] = CRITERIA) -> str:
        made = self.sdk.evals.create(
            name="qa",
            data_source_config={
                "type": "custom",
                "item_schema": ITEM_SCHEMA,
                "include_sample_schema": True,
            },
            testing_criteria=criteria,  # type: ignore[arg-type]
        )
        return made.id

    def completions_run(self, eval_id: str, file_id: str, max_tokens: int = 12) -> str:
        run = self.sdk.evals.runs.create(
            eval_id=eval_id,
            name="smol",
            data_source={
                "type": "completions",
                "model": MODEL,
                "source": {"type": "file_id", "id": file_id},
                "input_messages": MESSAGES,  # type: ignore[typeddict-item]
                "sampling_params": {
                    "temperature": 0,
                    "max_completion_tokens": max_tokens,
                    "seed": 1,
                },
            },
        )
        assert run.status == "queued"
        return run.id

    def wait_ended(self, eval_id: str, run_id: str, timeout: float = 180) -> Any:
        def ended() -> Any:
            run = self.sdk.evals.runs.retrieve(run_id, eval_id=eval_id)
            return run if run.status in ENDED else None

        return wait_until(ended, timeout, 0.2, f"run {run_id} to end")

    def items(self, eval_id: str, run_id: str) -> list[Any]:
        return list(self.sdk.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=100))

    def runner_pids(self) -> set[int]:
        return self.server.runner_pids()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    made = Env(Path(tmp_path_factory.mktemp("lmaas-evals")))
    try:
        yield made
    finally:
        made.server.stop()


def test_a_completions_run_graded_with_bleu_string_check_and_perplexity(env: Env) -> None:
    eval_id = env.new_eval()
    run_id = env.completions_run(eval_id, env.eval_file())
    run = env.wait_ended(eval_id, run_id)
    assert run.status == "completed", run
    n = len(QUESTIONS)
    counts = run.result_counts
    assert counts.total == n and counts.errored == 0 and counts.passed + counts.failed == n
    usage = run.per_model_usage[0]
    assert usage.model_name == MODEL and usage.invocation_count == n
    assert n <= usage.completion_tokens <= 12 * n

    items = env.items(eval_id, run_id)
    assert sorted(i.datasource_item_id for i in items) == list(range(n))
    passed = {"bleu": 0, "mentions": 0, "answer ppl": 0}
    total_logprob, total_tokens = 0.0, 0
    for item in items:
        text = item.sample.output[0].content
        answer = item.datasource_item["answer"]
        results = {r.name: r.to_dict() for r in item.results}
        bleu = sacrebleu.sentence_bleu(text, [answer]).score / 100
        assert results["bleu"]["score"] == pytest.approx(bleu, abs=1e-9)
        assert results["bleu"]["passed"] == (bleu >= 0.2)
        assert results["mentions"]["passed"] == (answer.lower() in text.lower())
        scored = env.post("/v1/score", {"model": MODEL, "input": answer}).json()["data"][0]
        assert results["answer ppl"]["score"] == pytest.approx(scored["perplexity"], rel=1e-4)
        total_logprob += scored["total_logprob"]
        total_tokens += scored["num_tokens"]
        for name in passed:
            passed[name] += bool(results[name]["passed"])
        assert item.status == ("pass" if all(r.passed for r in item.results) else "fail")
    per = {c.testing_criteria: c for c in run.per_testing_criteria_results}
    assert {name: per[name].passed for name in passed} == passed
    metrics = per["answer ppl"].model_extra["metrics"]  # type: ignore[index]
    assert metrics["perplexity"] == pytest.approx(math.exp(-total_logprob / total_tokens), rel=1e-4)

    # The figures are attached to the store version the run evaluated.
    version = env.admin_get(
        f"/admin/models/{MODEL}/versions/{run.model_extra['model_version'].split(':')[1]}"
    )  # type: ignore[index]
    attached = {e["run_id"]: e for e in version["evaluations"]}
    assert attached[run_id]["eval_id"] == eval_id
    assert attached[run_id]["result_counts"]["total"] == n

    # Finished: cancel is refused, delete forgets it.
    with pytest.raises(openai.ConflictError):
        env.sdk.evals.runs.cancel(run_id, eval_id=eval_id)
    assert run_id in [r.id for r in env.sdk.evals.runs.list(eval_id)]


def test_a_jsonl_run_with_cosine_and_zero_shot_label_graders(env: Env) -> None:
    made = env.sdk.evals.create(
        name="given samples",
        data_source_config={
            "type": "custom",
            "item_schema": {"type": "object", "properties": {"text": {}, "label": {}}},
            "include_sample_schema": True,
        },
        testing_criteria=[  # type: ignore[list-item]
            {
                "type": "text_similarity",
                "name": "cos",
                "input": "{{sample.output_text}}",
                "reference": "{{item.text}}",
                "evaluation_metric": "cosine",
                "pass_threshold": 0.99,
            },
            {
                "type": "label",
                "name": "sentiment",
                "model": MODEL,
                "input": "{{item.text}}",
                "reference": "{{item.label}}",
                "candidate_labels": ["happy", "sad"],
            },
        ],
    )
    content = [
        {
            "item": {"text": "I love this sunny day", "label": "happy"},
            "sample": {"output_text": "I love this sunny day"},
        },
        {
            "item": {"text": "I am crying and alone", "label": "sad"},
            "sample": {"output_text": "Bananas are yellow"},
        },
    ]
    run = env.sdk.evals.runs.create(
        eval_id=made.id,
        data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}},  # type: ignore[typeddict-item]
    )
    done = env.wait_ended(made.id, run.id)
    assert done.status == "completed" and done.result_counts.total == 2
    by_index = {
        i.datasource_item_id: {r.name: r.to_dict() for r in i.results}
        for i in env.items(made.id, run.id)
    }
    assert by_index[0]["cos"]["score"] == pytest.approx(1.0, abs=1e-4)
    assert by_index[1]["cos"]["score"] < 0.6 and not by_index[1]["cos"]["passed"]
    labels = [by_index[i]["sentiment"]["label"] for i in (0, 1)]
    assert set(labels) <= {"happy", "sad"}
    per = {c.testing_criteria: c for c in done.per_testing_criteria_results}
    figures = per["sentiment"].model_extra["metrics"]  # type: ignore[index]
    expected = sum(a == b for a, b in zip(labels, ["happy", "sad"], strict=True)) / 2
    assert figures["accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("change", "param", "status"),
    [
        ({"model": "no-such-model"}, "data_source.model", 404),
        ({"source": {"type": "file_id", "id": "file-nope"}}, "data_source.source.id", 404),
        (
            {
                "input_messages": {
                    "type": "template",
                    "template": [{"role": "user", "content": "{{item.missing}}"}],
                }
            },
            "data_source.input_messages.template[0].content",
            400,
        ),
        ({"type": "responses"}, "data_source.type", 400),
        (
            {"sampling_params": {"temperature": "hot"}},
            "data_source.sampling_params.temperature",
            400,
        ),
    ],
)
def test_bad_runs_are_refused_naming_the_field(
    env: Env, change: dict[str, Any], param: str, status: int
) -> None:
    eval_id = env.new_eval()
    source = {
        "type": "completions",
        "model": MODEL,
        "source": {"type": "file_content", "content": [{"item": {"question": "q", "answer": "a"}}]},
        "input_messages": MESSAGES,
    } | change
    r = env.post(f"/v1/evals/{eval_id}/runs", {"data_source": source})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    assert env.sdk.evals.runs.list(eval_id).data == []  # nothing written


def test_bad_items_and_evals_are_refused(env: Env) -> None:
    eval_id = env.new_eval()
    bad = "".join(
        json.dumps(line) + "\n"
        for line in [
            {"item": {"question": "q", "answer": "a"}, "sample": {"output_text": "a"}},
            {"item": {"question": 3}, "sample": {"output_text": "a"}},
        ]
    )
    file_id = env.sdk.files.create(file=("bad.jsonl", bad.encode()), purpose="evals").id
    r = env.post(
        f"/v1/evals/{eval_id}/runs",
        {"data_source": {"type": "jsonl", "source": {"type": "file_id", "id": file_id}}},
    )
    assert r.status_code == 400 and "line 2" in r.json()["error"]["message"], r.text
    batch_file = env.sdk.files.create(
        file=(
            "b.jsonl",
            b'{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {}}\n',
        ),
        purpose="batch",
    ).id
    r = env.post(
        f"/v1/evals/{eval_id}/runs",
        {"data_source": {"type": "jsonl", "source": {"type": "file_id", "id": batch_file}}},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_file_purpose"
    r = env.post(
        "/v1/evals",
        {
            "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
            "testing_criteria": [{"type": "score_model", "name": "x"}],
        },
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "testing_criteria[0].type"
    r = env.post(
        "/v1/evals",
        {
            "data_source_config": {"type": "custom", "item_schema": {"type": "nonsense"}},
            "testing_criteria": CRITERIA,
        },
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "data_source_config.item_schema"
    with pytest.raises(openai.NotFoundError):
        env.sdk.evals.retrieve("eval_00000000000000deadbeef00")


def test_kill_9_of_the_runner_mid_run_grades_every_item_once(env: Env) -> None:
    eval_id = env.new_eval(CRITERIA[:2])
    n = 30
    run_id = env.completions_run(eval_id, env.eval_file(n), max_tokens=16)

    def progressed() -> bool:
        run = env.sdk.evals.runs.retrieve(run_id, eval_id=eval_id)
        return run.model_extra["progress"]["done"] >= 2  # type: ignore[index,no-any-return]

    wait_until(progressed, 120, 0.1, "two items graded")
    (pid,) = env.runner_pids()
    os.kill(pid, signal.SIGKILL)
    run = env.wait_ended(eval_id, run_id)
    assert run.status == "completed", run
    assert run.result_counts.total == n and run.result_counts.errored == 0
    items = env.items(eval_id, run_id)
    assert sorted(i.datasource_item_id for i in items) == list(range(n))  # each exactly once
    assert env.admin_get(f"/admin/jobs/{run_id}")["attempts"] == 2


def test_cancel_mid_run_then_delete(env: Env) -> None:
    eval_id = env.new_eval(CRITERIA[:2])
    run_id = env.completions_run(eval_id, env.eval_file(40), max_tokens=32)

    def progressed() -> bool:
        run = env.sdk.evals.runs.retrieve(run_id, eval_id=eval_id)
        return run.model_extra["progress"]["done"] >= 1  # type: ignore[index,no-any-return]

    wait_until(progressed, 120, 0.1, "an item graded")
    # OpenAI's cancel, as curl sends it: no body, no Content-Type.
    headers = {"Authorization": f"Bearer {env.user}"}
    cancel = httpx.post(f"{env.server.url}/v1/evals/{eval_id}/runs/{run_id}", headers=headers)
    assert cancel.status_code == 200 and cancel.json()["status"] in ("in_progress", "canceled")
    run = env.wait_ended(eval_id, run_id, timeout=30)
    assert run.status == "canceled"
    graded = env.items(eval_id, run_id)
    assert 1 <= len(graded) < 40
    assert run.result_counts.total == len(graded)
    deleted = env.sdk.evals.runs.delete(run_id, eval_id=eval_id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        env.sdk.evals.runs.retrieve(run_id, eval_id=eval_id)
    assert env.sdk.evals.delete(eval_id).deleted
    with pytest.raises(openai.NotFoundError):
        env.sdk.evals.runs.list(eval_id)
