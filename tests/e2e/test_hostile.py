"""Hostile inputs that need a server set up apart from test_serving's (issue 10): one with API
keys (the admin routes need one) whose schema limits are raised to their maximum, so that
schemas a llama.cpp worker cannot build safely or in time reach the worker, and whose grammar
time limit is 2 s.

An enum of 100,000 strings takes llama.cpp about 25 s to compile here; it once blocked the
worker's IPC reader thread, so health pings failed and the supervisor killed the worker (and
every request on it). Now the request is refused with a 400 after 2 s while the build runs out
on a thread of its own, the worker keeps its process and serves other requests, and grammars
work again once the build has ended. Grammars nested deeper than llama.cpp's parser survives
are refused by the worker itself. And the admin routes answer version numbers no database
column holds with a 4xx, not a 500; so do the Files and Batch APIs and /admin/jobs their bad
requests (``JOB_CASES``), with this server's job runner running.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bad_inputs import (
    ADMIN_CASES,
    CHAT,
    JOB_CASES,
    JOB_FILES_MAX_BYTES,
    AdminCase,
    JobCase,
    Upload,
    check_error_envelope,
    fill,
    multipart,
)
from tests.e2e.admin import Env, served_env
from tests.e2e.conftest import MODEL
from tests.e2e.server import wait_until

pytestmark = pytest.mark.e2e

ENUM_100K = {"enum": [f"v{i}" for i in range(100_000)]}
SMALL = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = Path(tmp_path_factory.mktemp("lmaas-hostile"))
    config = home / "config.yaml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "models": [{"name": MODEL, "engine": {"grammar_timeout_s": 2}}],
                "limits": {
                    "schema_max_enum": 100_000,
                    "schema_max_repeat": 10_000,
                    "schema_max_bytes": 16 * 1024**2,
                },
                "files": {"max_bytes": JOB_FILES_MAX_BYTES},
            }
        )
    )
    with served_env(home, "--config", str(config)) as served:
        yield served


def chat(env: Env, schema: dict[str, Any] | None = None) -> httpx.Response:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Answer in JSON."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": schema},
        }
    return env.req("POST", "/v1/chat/completions", env.user, json=body)


def restarts(env: Env) -> int:
    ready = env.get("/ready", env.admin).json()
    return int(ready["models"][MODEL]["replicas"][0]["restarts"])


def test_a_grammar_past_its_time_limit_is_refused_and_the_worker_lives_on(
    env: Env,
) -> None:
    pids = env.server.worker_pids(MODEL)
    r = chat(env, ENUM_100K)
    assert r.status_code == 400, r.text
    err = check_error_envelope(r.json())
    assert (err["code"], err["param"]) == ("grammar_timeout", "response_format"), err

    # While the build runs out, requests without a grammar are served as usual.
    plain = chat(env)
    assert plain.status_code == 200, plain.text
    assert env.server.worker_pids(MODEL) == pids

    # Newer grammars wait for the overrunning build (503 meanwhile), then work again; the
    # build outlasts the supervisor's ping timeout, which must not have killed the worker.
    def small_schema_served() -> bool:
        answer = chat(env, SMALL)
        assert answer.status_code in (200, 503), answer.text
        return answer.status_code == 200

    wait_until(small_schema_served, 180, interval=1, what="grammars to be built again")
    assert env.server.worker_pids(MODEL) == pids
    assert restarts(env) == 0


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "maxLength": 10_000},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 10_000},
        {"type": "string", "pattern": "^(ab){0,10000}$"},
    ],
    ids=["max-length", "max-items", "pattern-quantifier"],
)
def test_a_grammar_too_deep_for_llama_cpp_is_refused_by_the_worker(
    env: Env, schema: dict[str, Any]
) -> None:
    pids = env.server.worker_pids(MODEL)
    r = chat(env, schema)
    assert r.status_code == 400, r.text
    assert check_error_envelope(r.json())["param"] == "response_format"
    assert chat(env).status_code == 200
    assert env.server.worker_pids(MODEL) == pids
    assert restarts(env) == 0


@pytest.mark.parametrize("case", ADMIN_CASES, ids=[c.id for c in ADMIN_CASES])
def test_bad_admin_input_table(env: Env, case: AdminCase) -> None:
    pids = env.server.worker_pids(MODEL)
    r = env.req(case.method, case.path.replace("{model}", MODEL), env.admin, json=case.body)
    assert r.status_code == case.status, r.text
    assert check_error_envelope(r.json())["param"] == case.param
    assert chat(env).status_code == 200
    assert env.server.worker_pids(MODEL) == pids
    assert restarts(env) == 0


def upload(env: Env, key: str, data: bytes, purpose: str = "batch") -> str:
    content_type, body = multipart(Upload(purpose, data))
    r = env.req("POST", "/v1/files", key, headers={"Content-Type": content_type}, content=body)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def batch_line(custom_id: str, url: str = CHAT, model: str = MODEL) -> dict[str, Any]:
    if url == CHAT:
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
        body["max_tokens"] = 2
    else:
        body = {"model": model, "input": "hi"}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def ended_batch(env: Env, batch_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        batch = env.get(f"/v1/batches/{batch_id}", env.user).json()
        return batch if batch["status"] in ("completed", "failed", "cancelled", "expired") else None

    return wait_until(ended, 120, 0.2, f"batch {batch_id} to end")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def job_names(env: Env) -> dict[str, str]:
    """What the job cases' ``{names}`` stand for (the admin key is the other key)."""
    names = {
        "batch_file": upload(env, env.user, jsonl(batch_line("a"), batch_line("b"))),
        "mixed_file": upload(
            env, env.user, jsonl(batch_line("a"), batch_line("b", "/v1/embeddings"))
        ),
        "data_file": upload(env, env.user, b"some bytes", "user_data"),
        "other_file": upload(env, env.admin, jsonl(batch_line("a"))),
    }
    body = {"input_file_id": names["batch_file"], "endpoint": CHAT, "completion_window": "24h"}
    r = env.req("POST", "/v1/batches", env.user, json=body)
    assert r.status_code == 200, r.text
    names["finished_batch"] = ended_batch(env, r.json()["id"])["id"]
    return names


def send(env: Env, case: JobCase, names: dict[str, str]) -> httpx.Response:
    key, path = env.admin if case.admin else env.user, fill(case.path, names)
    if isinstance(case.body, Upload):
        content_type, data = multipart(case.body)
        return env.req(case.method, path, key, headers={"Content-Type": content_type}, content=data)
    if isinstance(case.body, bytes):
        json_type = {"Content-Type": "application/json"}
        return env.req(case.method, path, key, headers=json_type, content=case.body)
    return env.req(case.method, path, key, json=fill(case.body, names))


@pytest.mark.parametrize("case", JOB_CASES, ids=[c.id for c in JOB_CASES])
def test_bad_job_input_table(env: Env, job_names: dict[str, str], case: JobCase) -> None:
    r = send(env, case, job_names)
    assert r.status_code == case.status, r.text
    error = check_error_envelope(r.json())
    assert error["param"] == case.param, error
    if case.code is not None:
        assert error["code"] == case.code, error
    queued = env.get("/admin/jobs?status=queued,in_progress", env.admin).json()["data"]
    assert queued == []  # nothing was accepted


def test_a_line_for_a_model_that_cannot_serve_its_endpoint_is_an_error_line(env: Env) -> None:
    """/v1/classify with a generation model and no labels of its own: the line's 400 is in the
    error file, the other line is answered, and the batch completes."""
    lines = [
        {
            **batch_line("ok"),
            "url": "/v1/classify",
            "body": {"model": MODEL, "input": "great", "candidate_labels": ["good", "bad"]},
        },
        {
            **batch_line("no-labels"),
            "url": "/v1/classify",
            "body": {"model": MODEL, "input": "great"},
        },
    ]
    file_id = upload(env, env.user, jsonl(*lines))
    body = {"input_file_id": file_id, "endpoint": "/v1/classify", "completion_window": "24h"}
    batch = env.req("POST", "/v1/batches", env.user, json=body).json()
    done = ended_batch(env, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    errors = env.get(f"/v1/files/{done['error_file_id']}/content", env.user).text.splitlines()
    (line,) = [json.loads(e) for e in errors]
    assert line["custom_id"] == "no-labels" and line["response"]["status_code"] == 400
    assert "candidate_labels" in line["error"]["message"]
