"""Fine-tuning on a real server and its real job runner, driven by the official `openai` SDK:
a short LoRA job on the shipped SmolLM2 teaches a fixed reply; the fine-tuned model then
answers in that style under its `fine_tuned_model` name, the events show the loss falling,
the store holds the new versions with their held-out perplexity beside the base's, and bad
requests are refused naming the field with nothing created."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.admin import new_key
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

REPLY = "Ahoy! Arr, matey."
QUESTIONS = [
    "What is the capital of France?",
    "How do I boil an egg?",
    "Tell me a fact about the moon.",
    "What is two plus two?",
    "Name a color.",
    "Why is the sea salty?",
    "What time is it?",
    "Recommend a book.",
    "How tall is a giraffe?",
    "What is rain?",
    "Say something nice.",
    "Where do penguins live?",
    "What is a verb?",
    "How many days are in a week?",
    "What do cows eat?",
    "Who wrote Hamlet?",
]


class Env:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.admin = new_key(home, "admin")
        self.user = new_key(home, "inference")
        self.server = ServerProcess(home, env={"LMAAS_JOBS__LEASE_SECONDS": "10"})
        self.server.wait_ready()
        self.sdk = openai.OpenAI(base_url=f"{self.server.url}/v1", api_key=self.user, max_retries=0)

    def upload(self, lines: list[dict[str, Any]], name: str = "train.jsonl") -> str:
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return self.sdk.files.create(file=(name, data), purpose="fine-tune").id

    def admin_get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.admin}"}
        r = httpx.get(self.server.url + path, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    made = Env(Path(tmp_path_factory.mktemp("lmaas-ft")))
    try:
        yield made
    finally:
        made.server.stop()


def chat_example(question: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": REPLY},
        ]
    }


@pytest.mark.timeout(900)  # training, export and the held-out evals: ~3 min on a quiet machine
def test_a_lora_job_teaches_a_reply_style_served_by_name(env: Env) -> None:
    train = env.upload([chat_example(q) for q in QUESTIONS[:12]])
    valid = env.upload([chat_example(q) for q in QUESTIONS[12:]], "valid.jsonl")
    job = env.sdk.fine_tuning.jobs.create(
        model=MODEL,
        training_file=train,
        validation_file=valid,
        suffix="pirate",
        seed=7,
        hyperparameters={"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 5},
    )
    assert job.status == "queued" and job.fine_tuned_model is None

    def ended() -> Any:
        found = env.sdk.fine_tuning.jobs.retrieve(job.id)
        return found if found.status in ("succeeded", "failed", "cancelled") else None

    done = wait_until(ended, 900, 1.0, "the fine-tuning job")
    assert done.status == "succeeded", done
    assert done.fine_tuned_model == f"ft:{MODEL}:pirate:{job.id}"
    assert done.trained_tokens and done.trained_tokens > 0

    events = list(env.sdk.fine_tuning.jobs.list_events(job.id, limit=100))
    steps = [e.data for e in events if e.type == "metrics"]
    assert len(steps) == 18  # 12 examples / 2 per batch x 3 epochs
    losses = [float(s["train_loss"]) for s in steps]  # type: ignore[index]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 / 2  # the loss falls
    assert any(s.get("valid_loss") is not None for s in steps)  # type: ignore[union-attr]
    checkpoints = env.sdk.fine_tuning.jobs.checkpoints.list(job.id)
    assert [c.step_number for c in checkpoints] == [18, 12, 6]  # one per epoch, newest first

    # The model is served under its name once deployed, and answers in the taught style.
    served = done.fine_tuned_model or ""

    def answer() -> str | None:
        try:
            reply = env.sdk.chat.completions.create(
                model=served,
                messages=[{"role": "user", "content": "What is the tallest mountain?"}],
                max_tokens=12,
                temperature=0,
            )
        except (openai.NotFoundError, openai.APIStatusError):
            return None
        return reply.choices[0].message.content or ""

    text = wait_until(answer, 180, 1.0, "the fine-tuned model to answer")
    assert text.startswith("Ahoy"), text
    base = env.sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the tallest mountain?"}],
        max_tokens=12,
        temperature=0,
    )
    assert not (base.choices[0].message.content or "").startswith("Ahoy")

    # The store holds both forms, each with the held-out perplexity beside the base's.
    store_model = done.model_extra["model_version"].split(":")[0]  # type: ignore[index]
    versions = env.admin_get(f"/admin/models/{store_model}")["versions"]
    assert sorted(v["format"] for v in versions) == ["gguf", "hf"]
    gguf = env.admin_get(f"/admin/models/{store_model}/versions/gguf")
    assert gguf["quantization"] == "Q4_0"
    tuned = gguf["evaluations"][0]["per_testing_criteria_results"][0]["metrics"]["perplexity"]
    base_version = env.admin_get(f"/admin/models/{MODEL}/versions/latest")
    before = next(e for e in base_version["evaluations"] if e["run_id"].startswith(job.id))[
        "per_testing_criteria_results"
    ][0]["metrics"]["perplexity"]
    assert tuned < before / 2  # the held-out replies became far more likely

    # The same comparison through the evals machinery, on the served models: one eval and run
    # per model, each attached to the version it scored.
    def held_out_runs() -> dict[str, Any] | None:
        mine = [e for e in env.sdk.evals.list(limit=100) if job.id in e.name]
        runs = {e.name.rsplit(": ", 1)[1]: env.sdk.evals.runs.list(e.id).data for e in mine}
        if len(runs) < 2 or any(not r or r[0].status != "completed" for r in runs.values()):
            return None
        return {label: r[0] for label, r in runs.items()}

    runs = wait_until(held_out_runs, 300, 1.0, "the held-out eval runs")
    ppl = {
        label: run.per_testing_criteria_results[0].model_extra["metrics"]["perplexity"]
        for label, run in runs.items()
    }
    assert ppl["fine-tuned"] < ppl["base"] / 2, ppl
    assert runs["fine-tuned"].model_extra["model_version"] == done.model_extra["model_version"]
    gguf = env.admin_get(f"/admin/models/{store_model}/versions/gguf")
    assert runs["fine-tuned"].id in {e["run_id"] for e in gguf["evaluations"]}


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({"model": "no-such-model"}, "model", 404),
        ({"model": "all-minilm-l6-v2"}, "model", 400),
        ({"training_file": "file-nope"}, "training_file", 404),
        ({"suffix": "Has Spaces"}, "suffix", 400),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", 400),
        (
            {"hyperparameters": {"learning_rate_multiplier": -1}},
            "hyperparameters.learning_rate_multiplier",
            400,
        ),
    ],
)
def test_bad_jobs_are_refused_naming_the_field(
    env: Env, body: dict[str, Any], param: str, status: int
) -> None:
    train = env.upload([chat_example(q) for q in QUESTIONS[:4]])
    before = len(env.sdk.fine_tuning.jobs.list().data)
    request = {"model": MODEL, "training_file": train} | body
    headers = {"Authorization": f"Bearer {env.user}"}
    r = httpx.post(
        f"{env.server.url}/v1/fine_tuning/jobs", json=request, headers=headers, timeout=30
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    assert len(env.sdk.fine_tuning.jobs.list().data) == before


def test_bad_training_files_name_the_line(env: Env) -> None:
    no_assistant = {"messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(openai.BadRequestError) as caught:  # refused as it is uploaded
        env.upload([chat_example("a"), no_assistant])
    assert "line 2" in str(caught.value) and "assistant" in str(caught.value)
    batch = env.sdk.files.create(
        file=(
            "b.jsonl",
            b'{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {}}\n',
        ),
        purpose="batch",
    ).id
    with pytest.raises(openai.BadRequestError) as wrong:
        env.sdk.fine_tuning.jobs.create(model=MODEL, training_file=batch)
    assert wrong.value.code == "invalid_file_purpose"
