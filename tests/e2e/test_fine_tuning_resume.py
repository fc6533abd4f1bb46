"""Fine-tuning jobs on a real server and its real job runner, with tiny runs: a distillation of
the shipped SmolLM2 into a half-depth student, started and followed with `lmaas finetune create
--follow` and served under its name; distillation pairs that cannot work, refused naming the
field; then LoRA jobs on that student's Hugging Face version, stopped on purpose: a cancel in
the middle of one (cancelled within seconds, its checkpoint kept, a second cancel 409) and
`kill -9` of the runner in the middle of one (the next runner goes on from the last checkpoint,
the step numbers continue, and the job succeeds). One server for the module; jobs run one at a
time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from gguf import GGUFReader
from safetensors.numpy import save

from lmaas.config import SHIPPED_MODELS, find_package_file
from tests.e2e.admin import cli, new_key
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until
from tests.hf_folder import tar_bytes

pytestmark = pytest.mark.e2e

# A lease of 6 s: heartbeats every 0.6 s, so a cancel reaches the training loop within a second.
SERVER_ENV = {"LMAAS_JOBS__LEASE_SECONDS": "6"}
ENDED = ("succeeded", "failed", "cancelled")
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "maple",
    "ember",
    "quartz",
    "willow",
    "harbor",
    "falcon",
    "meadow",
    "cedar",
]


class Env:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.admin = new_key(home, "admin")
        self.user = new_key(home, "inference")
        self.server = ServerProcess(home, env=SERVER_ENV)
        self.server.wait_ready()
        self.sdk = openai.OpenAI(base_url=f"{self.server.url}/v1", api_key=self.user, max_retries=0)

    def upload(self, lines: list[dict[str, Any]]) -> str:
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return self.sdk.files.create(file=("train.jsonl", data), purpose="fine-tune").id

    def create(self, **body: Any) -> str:
        """A job created over plain HTTP (the lmaas fields are not the SDK's)."""
        r = self.post("/v1/fine_tuning/jobs", body, self.user)
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def post(self, path: str, body: Any, key: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.post(self.server.url + path, json=body, headers=headers, timeout=60)

    def admin_get(self, path: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.admin}"}
        r = httpx.get(self.server.url + path, params=params, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """Every event of the job, oldest first (the admin log: seq, message, metrics)."""
        return list(self.admin_get(f"/admin/jobs/{job_id}/events", limit=1000)["data"])

    def wait_ended(self, job_id: str, timeout: float) -> Any:
        def ended() -> Any:
            job = self.sdk.fine_tuning.jobs.retrieve(job_id)
            return job if job.status in ENDED else None

        return wait_until(ended, timeout, 0.2, f"fine-tuning job {job_id} to end")

    def runner_pids(self) -> set[int]:
        return self.server.runner_pids()

    def cli(self, *args: str, key: str | None = None) -> str:
        return cli(self.home, *args, key=key or self.user, url=self.server.url)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    made = Env(Path(tmp_path_factory.mktemp("lmaas-ft-resume")))
    try:
        yield made
    finally:
        made.server.stop()


def examples(n: int) -> list[dict[str, Any]]:
    """Short chat examples: a word in, the same word back in capitals."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"Shout {WORDS[i % len(WORDS)]}."},
                {"role": "assistant", "content": f"{WORDS[i % len(WORDS)].upper()}!"},
            ]
        }
        for i in range(n)
    ]


def step_events(events: list[dict[str, Any]]) -> list[int]:
    return [
        int(e["metrics"]["step"])
        for e in events
        if e["metrics"] and "train_loss" in e["metrics"] and not e["metrics"].get("checkpoint")
    ]


def lora_job(env: Env, base: str, n_examples: int, **extra: Any) -> str:
    return env.create(
        model=base,
        training_file=env.upload(examples(n_examples)),
        seed=3,
        hyperparameters={"n_epochs": 2, "batch_size": 1},
        deploy_replicas=0,
        quantization="F16",
        **extra,
    )


# -- distillation pairs that cannot work ---------------------------------------------------------


def tiny_llama_tar() -> bytes:
    """A Hugging Face folder of a (very) small Llama: a causal LM far smaller than SmolLM2."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": 1,
        "vocab_size": 16,
        "max_position_embeddings": 64,
    }
    weights = {"model.embed_tokens.weight": np.zeros((16, 8), dtype=np.float32)}
    return tar_bytes(
        {
            "config.json": json.dumps(config).encode(),
            "model.safetensors": save(weights, metadata={"format": "pt"}),
            # A tokenizer of its own 16 tokens: not SmolLM2's.
            "tokenizer.json": json.dumps(
                {"model": {"type": "BPE", "vocab": {chr(97 + i): i for i in range(16)}}}
            ).encode(),
        }
    )


@pytest.fixture(scope="module")
def tiny_llama(env: Env) -> str:
    headers = {"Authorization": f"Bearer {env.admin}", "Content-Type": "application/x-tar"}
    pushed = httpx.post(
        f"{env.server.url}/admin/models/tiny-llama/versions",
        content=tiny_llama_tar(),
        headers=headers,
        timeout=60,
    )
    assert pushed.status_code == 201, pushed.text
    return "tiny-llama"


@pytest.mark.parametrize(
    ("distillation", "param", "code"),
    [
        ({"teacher": "all-minilm-l6-v2"}, "method.distillation.teacher", "model_not_trainable"),
        (
            {"teacher": "tiny-llama", "student": MODEL},  # pushed by tiny_llama
            "method.distillation.student",
            "student_not_smaller",
        ),
        (
            {"teacher": MODEL, "student": "tiny-llama"},  # smaller, but another tokenizer
            "method.distillation.teacher",
            "tokenizer_mismatch",
        ),
    ],
)
def test_distillation_pairs_that_cannot_work_are_refused(
    env: Env, tiny_llama: str, distillation: dict[str, Any], param: str, code: str
) -> None:
    train = env.upload(examples(4))
    before = len(env.sdk.fine_tuning.jobs.list().data)
    body = {
        "model": MODEL,
        "training_file": train,
        "method": {"type": "distillation", "distillation": distillation},
    }
    r = env.post("/v1/fine_tuning/jobs", body, env.user)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    assert len(env.sdk.fine_tuning.jobs.list().data) == before  # nothing created


# -- distillation into half the layers, through the CLI ------------------------------------------


def layers(path: Path) -> tuple[int, int]:
    """(the GGUF's block count, the parameters of its blocks)."""
    reader = GGUFReader(path)
    field = reader.fields["llama.block_count"]
    blocks = sum(int(t.n_elements) for t in reader.tensors if t.name.startswith("blk."))
    return int(field.parts[field.data[0]][0]), blocks


@dataclass(frozen=True)
class Distilled:
    job_id: str
    shown: str  # what `lmaas finetune create --follow` printed
    served: str
    store_model: str


@pytest.fixture(scope="module")
def distilled(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Distilled:
    """A half-depth student of the shipped SmolLM2, distilled for 4 steps through the CLI (the
    LoRA jobs below start from its Hugging Face version: it loads in seconds, the GGUF not)."""
    train = tmp_path_factory.mktemp("distill") / "train.jsonl"
    train.write_text("".join(json.dumps(line) + "\n" for line in examples(8)))
    shown = env.cli(
        "finetune",
        "create",
        "--model",
        MODEL,
        "--training-file",
        str(train),
        "--method",
        "distillation",
        "--student",
        "half",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--suffix",
        "half",
        "--follow",
        "--interval",
        "0.5",
    )
    found = re.search(r"(ftjob_[0-9a-f]{24}) queued: distillation of", shown)
    assert found, shown
    job = env.sdk.fine_tuning.jobs.retrieve(found[1])
    assert job.status == "succeeded", job
    store_model = str(job.model_extra["model_version"]).partition(":")[0]  # type: ignore[index]
    return Distilled(found[1], shown, f"ft:{MODEL}:half:{found[1]}", store_model)


def test_a_half_depth_distillation_followed_in_the_cli_is_served(
    env: Env, distilled: Distilled, tmp_path: Path
) -> None:
    job_id, shown, served = distilled.job_id, distilled.shown, distilled.served
    assert f"fine_tuned_model: {served}" in shown, shown
    assert "4/4" in shown and "train loss" in shown and "tokens/s" in shown, shown
    assert "checkpoint at step 4" in shown, shown  # messages above the display

    listed = env.cli("finetune", "ls")
    assert re.search(rf"{job_id}.*distillation.*succeeded.*4/4", listed), listed
    assert "checkpoint" in env.cli("finetune", "show", job_id)
    logs = env.cli("jobs", "logs", job_id, "--follow", key=env.admin)
    assert "4/4" in logs and f"fine_tuned_model: {served}" in logs, logs

    # The student has every other layer of the teacher.
    job = env.sdk.fine_tuning.jobs.retrieve(job_id)
    store_model, _, number = str(job.model_extra["model_version"]).partition(":")  # type: ignore[index]
    assert store_model == distilled.store_model
    version = env.admin_get(f"/admin/models/{store_model}/versions/{number}")
    assert version["format"] == "gguf" and version["quantization"] == "Q4_0"
    headers = {"Authorization": f"Bearer {env.admin}"}
    gguf = tmp_path / "student.gguf"
    with httpx.stream(
        "GET",
        f"{env.server.url}/admin/models/{store_model}/versions/{number}/content",
        headers=headers,
        timeout=120,
    ) as r:
        assert r.status_code == 200
        with gguf.open("wb") as f:
            for chunk in r.iter_bytes():
                f.write(chunk)
    shipped = SHIPPED_MODELS[MODEL]
    teacher_blocks, teacher_parameters = layers(find_package_file(shipped.package, shipped.file))
    student_blocks, student_parameters = layers(gguf)
    assert teacher_blocks % 2 == 0 and student_blocks == teacher_blocks // 2
    assert student_parameters * 2 == teacher_parameters  # the same layers, half as many
    teacher = env.admin_get(f"/admin/models/{MODEL}/versions/latest")
    assert version["parameter_count"] < teacher["parameter_count"]

    # Served under its name once deployed.
    def answer() -> str | None:
        try:
            reply = env.sdk.chat.completions.create(
                model=served, messages=[{"role": "user", "content": "Shout cedar."}], max_tokens=4
            )
        except openai.APIStatusError:
            return None
        return reply.choices[0].message.content or " "

    assert wait_until(answer, 120, 0.5, "the distilled model to answer")


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_mid_training_stops_within_seconds_and_keeps_the_checkpoint(
    env: Env, distilled: Distilled
) -> None:
    job_id = lora_job(env, f"{distilled.store_model}:hf", 16)  # 32 steps
    wait_until(lambda: step_events(env.events(job_id)), 180, 0.2, "the job's first training step")
    shown = env.cli("finetune", "cancel", job_id)
    assert f"{job_id}: cancelling" in shown or f"{job_id}: cancelled" in shown, shown
    job = env.wait_ended(job_id, 30)
    assert job.status == "cancelled" and job.fine_tuned_model is None, job
    row = env.admin_get(f"/admin/jobs/{job_id}")
    took = (
        datetime.fromisoformat(row["finished_at"])
        - datetime.fromisoformat(row["cancel_requested_at"])
    ).total_seconds()
    assert took < 5, f"the cancel took {took:.1f}s"  # the next heartbeat, one step, a checkpoint

    steps = step_events(env.events(job_id))
    assert 1 <= steps[-1] < 32  # stopped mid-run
    points = env.sdk.fine_tuning.jobs.checkpoints.list(job_id).data
    assert points and points[0].step_number == steps[-1]  # where it stopped, kept
    kept = env.home / "jobs" / job_id / "checkpoints" / f"checkpoint-{steps[-1]:08d}"
    assert (kept / "trainable.safetensors").is_file() and (kept / "state.json").is_file()

    with pytest.raises(openai.ConflictError):
        env.sdk.fine_tuning.jobs.cancel(job_id)
    again = subprocess.run(
        [sys.executable, "-m", "lmaas", "finetune", "cancel", job_id],
        capture_output=True,
        text=True,
        env={**os.environ, "LMAAS_URL": env.server.url, "LMAAS_API_KEY": env.user},
        timeout=60,
    )
    assert again.returncode == 1 and "error 409" in again.stderr, again.stderr


# -- kill -9 of the runner -----------------------------------------------------------------------


def test_kill_9_of_the_runner_resumes_from_the_last_checkpoint(
    env: Env, distilled: Distilled
) -> None:
    base = f"{distilled.store_model}:hf"
    job_id = lora_job(env, base, 12, checkpoint_every_steps=2)  # 24 steps, a checkpoint every 2

    def checkpointed() -> int:
        points = env.sdk.fine_tuning.jobs.checkpoints.list(job_id).data
        return points[0].step_number if points else 0

    seen = wait_until(checkpointed, 180, 0.1, "the job's first checkpoint")
    (pid,) = env.runner_pids()
    os.kill(pid, signal.SIGKILL)
    before_kill = max(step_events(env.events(job_id)))
    assert seen <= before_kill < 24  # killed mid-run
    wait_until(lambda: env.runner_pids() - {pid}, 30, 0.1, "a new runner")

    job = env.wait_ended(job_id, 300)
    assert job.status == "succeeded", job
    assert env.admin_get(f"/admin/jobs/{job_id}")["attempts"] == 2

    events = env.events(job_id)
    messages = [e["message"] for e in events]
    resumed_at = next(i for i, m in enumerate(messages) if m.startswith("resumed by runner"))
    note = next(e for e in events[resumed_at:] if e["message"].startswith("resuming from"))
    restart = int(note["metrics"]["resumed_from_step"])
    assert restart % 2 == 0 and seen <= restart <= before_kill  # the newest checkpoint
    after = step_events(events[resumed_at:])
    assert after == list(range(restart + 1, 25))  # the steps go on, not from 1
    assert set(step_events(events[:resumed_at])) >= set(range(1, restart + 1))
    assert job.trained_tokens and job.trained_tokens > 0
