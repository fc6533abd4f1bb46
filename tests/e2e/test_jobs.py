"""Batches on a real server and its real job runner process, driven by the official `openai`
SDK: chat and embeddings batches with the shipped models, `kill -9` of the runner in the
middle of a batch, cancel in the middle of one, and a gateway killed with a batch running
and another queued. One server for the module (leases of 4 s keep the waits short); the last
test kills it and starts another over the same home."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.admin import cli, new_key
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

EMBEDDING_MODEL = "all-minilm-l6-v2"
CHAT, EMBED = "/v1/chat/completions", "/v1/embeddings"
SERVER_ENV = {"LMAAS_JOBS__LEASE_SECONDS": "4"}
ENDED = ("completed", "failed", "cancelled", "expired")


class Jobs:
    """The server (replaced by the restart test), an admin key and a user's SDK client."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.admin = new_key(home, "admin")
        self.user = new_key(home, "inference")
        self.user_id = self.user.split("-")[1]
        self.server = self.start()

    def start(self) -> ServerProcess:
        server = ServerProcess(self.home, env=SERVER_ENV)
        server.wait_ready()
        self.sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=self.user, max_retries=0)
        return server

    def admin_get(self, path: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.admin}"}
        r = httpx.get(self.server.url + path, params=params, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def submit(self, lines: list[dict[str, Any]], endpoint: str = CHAT, window: str = "24h") -> str:
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        f = self.sdk.files.create(file=("requests.jsonl", data), purpose="batch")
        batch = self.sdk.batches.create(
            input_file_id=f.id,
            endpoint=endpoint,
            completion_window=window,  # type: ignore[arg-type]
        )
        assert batch.status == "validating"
        return batch.id

    def wait_ended(self, batch_id: str, timeout: float = 120) -> openai.types.Batch:
        def ended() -> openai.types.Batch | None:
            batch = self.sdk.batches.retrieve(batch_id)
            return batch if batch.status in ENDED else None

        return wait_until(ended, timeout, 0.2, f"batch {batch_id} to end")  # type: ignore[no-any-return]

    def wait_done(self, batch_id: str, at_least: int) -> None:
        def progressed() -> bool:
            counts = self.sdk.batches.retrieve(batch_id).request_counts
            return counts is not None and counts.completed >= at_least

        wait_until(progressed, 120, 0.1, f"{at_least} lines of {batch_id}")

    def lines_of(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        text = self.sdk.files.content(file_id).text
        return [json.loads(line) for line in text.splitlines()]

    def runner_pids(self) -> set[int]:
        return self.server.runner_pids()

    def records(self, batch_id: str) -> list[dict[str, Any]]:
        page = self.admin_get("/admin/requests", key=self.user_id, limit=1000)
        return [r for r in page["data"] if r["request_id"].startswith(f"{batch_id}-")]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jobs]:
    env = Jobs(Path(tmp_path_factory.mktemp("lmaas-jobs")))
    try:
        yield env
    finally:
        env.server.stop()


def chat(custom_id: str, max_tokens: int = 8) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Write a word about {custom_id}."}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def test_a_chat_batch_through_the_sdk_and_the_cli(jobs: Jobs) -> None:
    ids = [f"chat-{i}" for i in range(6)]
    batch_id = jobs.submit([chat(c) for c in ids])
    batch = jobs.wait_ended(batch_id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (6, 0)
    assert batch.error_file_id is None and batch.model == MODEL
    assert batch.usage is not None and 6 <= batch.usage.output_tokens <= 48
    output = jobs.lines_of(batch.output_file_id)
    assert [line["custom_id"] for line in output] == ids
    for line in output:
        response = line["response"]
        assert line["error"] is None and response["status_code"] == 200
        assert response["body"]["object"] == "chat.completion"
        assert response["body"]["usage"]["completion_tokens"] <= 8
    assert jobs.sdk.files.retrieve(batch.output_file_id or "").purpose == "batch_output"
    assert batch_id in [b.id for b in jobs.sdk.batches.list()]

    # Each line is a request record of the batch's owner (written within a second or so).
    records = wait_until(lambda: len(jobs.records(batch_id)) == 6 and jobs.records(batch_id), 30)
    assert sorted(r["request_id"] for r in records) == sorted(
        f"{batch_id}-{i}" for i in range(1, 7)
    )
    assert {(r["endpoint"], r["status"], r["api_key_id"]) for r in records} == {
        ("chat", "ok", jobs.user_id)
    }

    where = {"key": jobs.admin, "url": jobs.server.url}
    listed = cli(jobs.home, "jobs", "ls", "--kind", "batch", **where)
    assert batch_id in listed and "completed" in listed and "6/6" in listed
    shown = cli(jobs.home, "jobs", "show", batch_id, **where)
    assert "completed" in shown and (batch.output_file_id or "") in shown
    logs = cli(jobs.home, "jobs", "logs", batch_id, "--follow", **where)
    assert "queued: 6 lines" in logs and "started by runner" in logs and "completed;" in logs

    def finished_metric() -> bool:
        text = httpx.get(f"{jobs.server.url}/metrics", timeout=10).text
        return 'lmaas_jobs_finished_total{kind="batch",status="completed"}' in text

    wait_until(finished_metric, 30, 0.5, "the job metrics")


def test_an_embeddings_batch(jobs: Jobs) -> None:
    texts = ["the cat sat", "a dog ran", "the cat sat"]
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": EMBED,
            "body": {"model": EMBEDDING_MODEL, "input": text},
        }
        for i, text in enumerate(texts)
    ]
    bad = {
        "custom_id": "bad",
        "method": "POST",
        "url": EMBED,
        "body": {"model": "no-such-model", "input": "x"},
    }
    batch = jobs.wait_ended(jobs.submit([*lines, bad], EMBED))
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 1)
    output = jobs.lines_of(batch.output_file_id)
    vectors = {
        line["custom_id"]: line["response"]["body"]["data"][0]["embedding"] for line in output
    }
    assert list(vectors) == ["e0", "e1", "e2"] and len(vectors["e0"]) == 384
    assert vectors["e0"] == pytest.approx(vectors["e2"], abs=1e-5)
    assert vectors["e0"] != pytest.approx(vectors["e1"], abs=1e-3)
    (error,) = jobs.lines_of(batch.error_file_id)
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 404


def test_a_chat_line_for_an_embeddings_model_is_an_error_line(jobs: Jobs) -> None:
    wrong = chat("wrong")
    wrong["body"]["model"] = EMBEDDING_MODEL
    batch = jobs.wait_ended(jobs.submit([chat("right"), wrong]))
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    (error,) = jobs.lines_of(batch.error_file_id)
    assert error["custom_id"] == "wrong" and error["response"]["status_code"] == 400
    assert error["error"]["code"] == "unsupported_task"
    assert f"models that can: {MODEL}" in error["error"]["message"]


def test_a_batch_not_done_within_its_completion_window_expires(jobs: Jobs) -> None:
    ids = [f"w{i}" for i in range(64)]  # 64 lines of 64 tokens: far more than 4 s here
    batch_id = jobs.submit([chat(c, max_tokens=64) for c in ids], window="4s")
    batch = jobs.wait_ended(batch_id, timeout=60)
    assert batch.status == "expired", batch
    assert batch.expires_at is not None and batch.expired_at is not None
    assert batch.expires_at - batch.created_at == 4
    assert batch.expires_at <= batch.expired_at <= batch.expires_at + 10
    assert batch.request_counts is not None and batch.request_counts.failed == 0
    output = jobs.lines_of(batch.output_file_id)
    errors = jobs.lines_of(batch.error_file_id)
    assert len(output) == batch.request_counts.completed and len(errors) >= 16
    assert sorted(line["custom_id"] for line in output + errors) == sorted(ids)  # each once
    assert {(e["response"], e["error"]["code"]) for e in errors} == {(None, "batch_expired")}


def test_kill_9_of_the_runner_mid_batch_runs_every_line_once(jobs: Jobs) -> None:
    ids = [f"k{i}" for i in range(40)]  # three rounds of line_concurrency (16)
    batch_id = jobs.submit([chat(c, max_tokens=16) for c in ids])
    jobs.wait_done(batch_id, 2)
    (pid,) = jobs.runner_pids()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: jobs.runner_pids() - {pid}, 30, 0.1, "a new runner")
    batch = jobs.wait_ended(batch_id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(ids), 0)
    output = jobs.lines_of(batch.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(ids)  # each exactly once
    job = jobs.admin_get(f"/admin/jobs/{batch_id}")
    assert job["attempts"] == 2
    events = [e["message"] for e in jobs.admin_get(f"/admin/jobs/{batch_id}/events")["data"]]
    assert any(m.startswith("resumed by runner") for m in events), events

    def answered() -> int:
        return len([r for r in jobs.records(batch_id) if r["status"] == "ok"])

    # Only lines in flight at the kill (at most line_concurrency) ran twice.
    wait_until(lambda: answered() >= len(ids), 30, 0.2, "the request records")
    assert answered() <= len(ids) + 16


def test_cancel_mid_batch(jobs: Jobs) -> None:
    batch_id = jobs.submit([chat(f"c{i}", max_tokens=48) for i in range(48)])
    jobs.wait_done(batch_id, 1)
    env = {**os.environ, "LMAAS_API_KEY": jobs.admin, "LMAAS_URL": jobs.server.url}
    follow = subprocess.Popen(
        [sys.executable, "-m", "lmaas", "jobs", "logs", batch_id, "-f", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "LMAAS_HOME": str(jobs.home)},
    )
    assert follow.poll() is None  # following a job still running
    cancelling = jobs.sdk.batches.cancel(batch_id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = jobs.wait_ended(batch_id, timeout=30)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert batch.request_counts is not None
    done = batch.request_counts.completed
    assert 1 <= done < 48 and batch.request_counts.failed == 0
    assert len(jobs.lines_of(batch.output_file_id)) == done
    with pytest.raises(openai.ConflictError):
        jobs.sdk.batches.cancel(batch_id)
    # `lmaas jobs logs -f` printed the events written while it ran, and stopped at the end.
    logs, _ = follow.communicate(timeout=30)
    assert follow.returncode == 0, logs
    assert "running 48 of 48 lines" in logs and "cancel requested" in logs, logs
    assert logs.splitlines()[-1].split(maxsplit=4)[-1].startswith("cancelled; "), logs

    def aborted() -> list[dict[str, Any]]:
        return [r for r in jobs.records(batch_id) if r["status"] == "cancelled"]

    # The lines in flight were ended, not run to their end.
    wait_until(aborted, 30, 0.2, "records of the lines cut short")


def test_a_gateway_killed_with_a_batch_running_and_one_queued(jobs: Jobs) -> None:
    running = jobs.submit([chat(f"g{i}", max_tokens=16) for i in range(40)])
    queued = jobs.submit([chat(f"q{i}") for i in range(3)])
    jobs.wait_done(running, 1)
    assert jobs.sdk.batches.retrieve(queued).status == "validating"
    os.killpg(jobs.server.proc.pid, signal.SIGKILL)  # the gateway, its workers and runner
    jobs.server.proc.wait()
    killed_at = time.time()
    jobs.server = jobs.start()
    first = jobs.wait_ended(running)
    second = jobs.wait_ended(queued)
    assert (first.status, second.status) == ("completed", "completed")
    assert second.in_progress_at is not None and second.in_progress_at >= int(killed_at)
    output = jobs.lines_of(first.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(f"g{i}" for i in range(40))
    assert len(jobs.lines_of(second.output_file_id)) == 3
    events = [e["message"] for e in jobs.admin_get(f"/admin/jobs/{running}/events")["data"]]
    assert any("its lease expired" in m for m in events), events
