"""Quantization as a job on a real server and its real job runner: `lmaas models quantize
--wait` makes a Q8_0 version of the shipped SmolLM2 (a Q4_1 file, so llama.cpp requantizes it),
which is listed with its alias, carries its figures beside the source's, deploys and answers a
chat request; bad requests are refused naming the field, with no job created."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.admin import Env, cli, served_env
from tests.e2e.conftest import MODEL
from tests.e2e.server import wait_until

pytestmark = pytest.mark.e2e

# Short, so that measuring stays quick (the built-in text is for real comparisons).
HELD_OUT = (
    "The lighthouse keeper climbed the stairs every evening at dusk. He trimmed the wick, "
    "polished the great lens and wrote the weather in a small book: wind, rain, the ships "
    "that passed. In forty years he missed only one night, when a storm flooded the path."
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with served_env(tmp_path_factory.mktemp("quantize-home")) as e:
        yield e


def admin_json(env: Env, path: str) -> Any:
    r = env.get(path, env.admin)
    assert r.status_code == 200, r.text
    return r.json()


def figures(version: dict[str, Any]) -> dict[str, Any]:
    (found,) = version["evaluations"]
    return {k: v for c in found["per_testing_criteria_results"] for k, v in c["metrics"].items()}


def quantize_jobs(env: Env) -> int:
    return len(admin_json(env, "/admin/jobs?kind=quantize")["data"])


def test_a_q8_0_version_is_made_measured_and_served(env: Env) -> None:
    data = json.dumps({"text": HELD_OUT}).encode() + b"\n"
    files = {"file": ("held-out.jsonl", data)}
    upload = httpx.post(
        f"{env.server.url}/v1/files",
        headers={"Authorization": f"Bearer {env.user}"},
        data={"purpose": "fine-tune"},
        files=files,
        timeout=30,
    )
    assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]

    out = cli(
        env.home,
        "models",
        "quantize",
        MODEL,
        "--type",
        "q8_0",
        "--eval-file",
        file_id,
        "--wait",
        key=env.admin,
        url=env.server.url,
    )
    assert "Q8_0" in out and "q8_0" in out and "(source)" in out, out

    model = admin_json(env, f"/admin/models/{MODEL}")
    assert model["latest"] == 1  # the deployment that follows latest keeps the source
    by_number = {v["number"]: v for v in model["versions"]}
    assert by_number[2]["quantization"] == "Q8_0" and "q8_0" in by_number[2]["aliases"]

    made = admin_json(env, f"/admin/models/{MODEL}/versions/q8_0")
    source = admin_json(env, f"/admin/models/{MODEL}/versions/1")
    new, old = figures(made), figures(source)
    assert new["size_bytes"] == made["size_bytes"] > source["size_bytes"]  # 8 bits against 4
    for measured in (new, old):
        assert 1 < measured["perplexity"] < 1000 and measured["eval_tokens"] > 30
        assert measured["tokens_per_second"] > 0
    # Requantized from Q4_1, Q8_0 keeps its quality: the perplexities stay close.
    assert abs(new["perplexity"] - old["perplexity"]) < 0.1 * old["perplexity"]

    jobs = admin_json(env, "/admin/jobs?kind=quantize")["data"]
    assert jobs[0]["status"] == "completed"
    assert jobs[0]["progress"]["done"] == jobs[0]["progress"]["total"] == 2
    assert jobs[0]["result"]["held_out"] == file_id

    created = env.req(
        "POST",
        "/admin/deployments",
        env.admin,
        json={"model": f"{MODEL}:q8_0", "name": "smollm2-q8", "replicas": 1, "wait": True},
    )
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 2

    def answer() -> str | None:
        r = env.req(
            "POST",
            "/v1/chat/completions",
            env.user,
            json={
                "model": "smollm2-q8",
                "messages": [{"role": "user", "content": "Name a colour."}],
                "max_tokens": 6,
                "temperature": 0,
            },
        )
        return r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else None

    assert wait_until(answer, 60, 0.5, "the Q8_0 deployment to answer").strip()


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "words"),
    [
        ("no-such-model/versions/1", {"types": ["Q8_0"]}, 404, "model", "does not exist"),
        (f"{MODEL}/versions/99", {"types": ["Q8_0"]}, 404, "version", "no version 99"),
        ("all-minilm-l6-v2/versions/1", {"types": ["Q8_0"]}, 400, "version", "GGUF versions"),
        (f"{MODEL}/versions/1", {"types": ["Q3_X"]}, 400, "types", "Q4_0, Q4_1, Q8_0, Q4_K_M"),
        (f"{MODEL}/versions/1", {"types": []}, 400, "types", "empty"),
        (f"{MODEL}/versions/1", {"types": ["Q8_0", "Q8_0"]}, 400, "types", "more than once"),
        (f"{MODEL}/versions/1", {"types": "Q8_0"}, 400, "types", "list"),
        (f"{MODEL}/versions/1", {}, 400, "types", "required"),
        (
            f"{MODEL}/versions/1",
            {"types": ["Q8_0"], "eval_file": "file-nope"},
            404,
            "eval_file",
            "file-nope",
        ),
    ],
)
def test_bad_requests_name_the_field_and_create_nothing(
    env: Env, path: str, body: dict[str, Any], status: int, param: str, words: str
) -> None:
    before = quantize_jobs(env)
    r = env.req("POST", f"/admin/models/{path}/quantize", env.admin, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert quantize_jobs(env) == before
    assert env.req("POST", f"/admin/models/{path}/quantize", env.user, json=body).status_code in (
        401,
        403,
    )
