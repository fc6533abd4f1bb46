"""Real clients against a real server (issue 14): the README's "Clients" snippets run as they
stand (openai, LangChain, LiteLLM), lm-evaluation-harness's `local-completions` with the remote
tokenizer on tasks written here (loglikelihood accuracy equal to /v1/score's, and a
generate_until task), the tokenizer routes, the end-of-text token in completions' logprobs,
/docs offline, and the CLI's local admin token."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
README_URL = "http://127.0.0.1:8000"
# No network but the server: LiteLLM reads its model price list from the package, Hugging Face
# libraries do not look for hub updates.
OFFLINE = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def snippet(name: str) -> str:
    """The code block under ``<!-- client: name -->`` in the README."""
    text = README.read_text()
    found = re.search(rf"<!-- client: {re.escape(name)} -->\n```\w+\n(.*?)```", text, re.S)
    assert found, f"README has no client snippet {name!r}"
    return found.group(1)


@pytest.mark.parametrize("name", ["openai", "langchain", "litellm"])
def test_readme_client_snippets_run(
    server: ServerProcess, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    code = snippet(name)
    assert README_URL in code
    scope: dict[str, Any] = {}
    exec(compile(code.replace(README_URL, server.url), f"README:{name}", "exec"), scope)
    if name == "openai":
        assert scope["reply"].choices[0].message.content.strip()
        assert [len(d.embedding) for d in scope["vectors"].data] == [384, 384]
    elif name == "langchain":
        assert isinstance(scope["answer"].content, str) and scope["answer"].content.strip()
        assert len(scope["vector"]) == 384
        # The same text embedded directly: the snippet sent text, not tiktoken's ids.
        direct = httpx.post(
            f"{server.url}/v1/embeddings",
            json={"model": "all-minilm-l6-v2", "input": "a cat"},
            timeout=60,
        ).json()["data"][0]["embedding"]
        assert max(abs(a - b) for a, b in zip(direct, scope["vector"], strict=True)) < 1e-4
    else:
        assert scope["response"].choices[0].message.content.strip()


def test_tokenizer_routes_as_vllm_has_them(server: ServerProcess) -> None:
    info = httpx.get(f"{server.url}/tokenizer_info", timeout=30).json()
    assert info["model"] == MODEL
    assert info["eos_token"] and isinstance(info["eos_token_id"], int)
    assert info["chat_template"] and info["model_max_length"] > 0
    named = httpx.post(f"{server.url}/tokenize", json={"model": MODEL, "prompt": "Hello world"})
    bare = httpx.post(f"{server.url}/tokenize", json={"prompt": "Hello world"})
    assert bare.status_code == 200 and bare.json()["tokens"] == named.json()["tokens"]
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": bare.json()["tokens"]})
    assert text.json()["prompt"] == "Hello world"


def test_the_end_of_text_token_is_the_generated_token(server: ServerProcess) -> None:
    """What lm-eval sends for a loglikelihood, when the model's next token is end-of-text
    (forced by logit_bias): the last logprobs entry is that token, after the whole prompt."""
    eos = httpx.get(f"{server.url}/tokenizer_info", timeout=30).json()["eos_token_id"]
    prompt = "The capital of France is Paris"
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 1,
        "echo": True,
        "logprobs": 1,
        "temperature": 0,
        "logit_bias": {str(eos): 100},
    }
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    n_prompt = r.json()["usage"]["prompt_tokens"]
    assert choice["text"] == prompt and choice["finish_reason"] == "stop"
    assert len(lp["token_logprobs"]) == n_prompt + 1
    assert "".join(lp["tokens"][:n_prompt]) == prompt and lp["tokens"][-1] == ""
    assert lp["token_logprobs"][-1] is not None and lp["token_logprobs"][-1] <= 0
    # The prompt's own entries are what they are without the forced end.
    plain = httpx.post(
        f"{server.url}/v1/completions", json={**body, "max_tokens": 0, "logit_bias": None}
    ).json()["choices"][0]["logprobs"]
    assert plain["token_logprobs"] == lp["token_logprobs"][:n_prompt]


def test_docs_are_served_offline(server: ServerProcess) -> None:
    for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = httpx.get(f"{server.url}{page}", timeout=30).text
        assert "http" not in html, html
        src = re.search(rf'src="([^"]*{re.escape(script)})"', html)
        assert src, html
        js = httpx.get(f"{server.url}{src.group(1)}", timeout=30)
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]


def test_the_cli_administers_the_local_server_without_a_key(server: ServerProcess) -> None:
    home = server.log_path.parent
    token = home / "admin.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMAAS_")}
    run = subprocess.run(
        [sys.executable, "-m", "lmaas", "ps", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "LMAAS_HOME": str(home)},
    )
    assert run.returncode == 0, run.stderr
    assert MODEL in run.stdout
    # The admin API still refuses a request without the token (or with another).
    assert httpx.get(f"{server.url}/admin/deployments").status_code == 401
    bad = {"authorization": "Bearer lmaas-local-" + "x" * 43}
    assert httpx.get(f"{server.url}/admin/deployments", headers=bad).status_code == 401


# -- lm-evaluation-harness ---------------------------------------------------------------------

CAPITALS = [
    ("The capital of France is", ["Paris", "Berlin", "Madrid"], 0),
    ("The capital of Germany is", ["Rome", "Berlin", "Lisbon"], 1),
    ("The capital of Italy is", ["Vienna", "Athens", "Rome"], 2),
    ("The capital of Spain is", ["Madrid", "Oslo", "Prague"], 0),
    ("The capital of Japan is", ["Seoul", "Tokyo", "Beijing"], 1),
    ("The largest planet in the solar system is", ["Mercury", "Mars", "Jupiter"], 2),
    ("Water freezes at zero degrees", ["Celsius", "Kelvin", "miles"], 0),
    ("The opposite of hot is", ["warm", "cold", "blue"], 1),
]
COUNTING = ["1, 2, 3, 4,", "Monday, Tuesday, Wednesday,", "a, b, c, d,"]


def _write_tasks(root: Path) -> None:
    data = root / "data"
    data.mkdir()
    with (data / "capitals.jsonl").open("w") as f:
        for question, choices, answer in CAPITALS:
            f.write(json.dumps({"question": question, "choices": choices, "answer": answer}) + "\n")
    with (data / "counting.jsonl").open("w") as f:
        for prompt in COUNTING:
            f.write(json.dumps({"prompt": prompt, "target": ""}) + "\n")
    common = "dataset_path: json\ntest_split: test\n"
    (root / "lmaas_capitals.yaml").write_text(
        "task: lmaas_capitals\n"
        + common
        + f"dataset_kwargs:\n  data_files:\n    test: {data / 'capitals.jsonl'}\n"
        + "output_type: multiple_choice\n"
        + 'doc_to_text: "{{question}}"\n'
        + 'doc_to_choice: "{{choices}}"\n'
        + 'doc_to_target: "{{answer}}"\n'
        + "metric_list:\n  - metric: acc\n"
    )
    (root / "lmaas_counting.yaml").write_text(
        "task: lmaas_counting\n"
        + common
        + f"dataset_kwargs:\n  data_files:\n    test: {data / 'counting.jsonl'}\n"
        + "output_type: generate_until\n"
        + 'doc_to_text: "{{prompt}}"\n'
        + 'doc_to_target: "{{target}}"\n'
        + 'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 6\n  temperature: 0\n'
        + "metric_list:\n  - metric: exact_match\n"
    )


def _samples(out: Path, task: str) -> list[dict[str, Any]]:
    files = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    assert files, list(out.rglob("*"))
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def test_lm_eval_local_completions_with_the_remote_tokenizer(
    server: ServerProcess, tmp_path: Path
) -> None:
    _write_tasks(tmp_path)
    out = tmp_path / "out"
    # The README's command, with this server's URL and the tasks written above.
    argv = shlex.split(snippet("lm-eval").replace(README_URL, server.url))
    assert argv[0] == "lm_eval" and "--tasks" in argv
    argv[argv.index("--tasks") + 1] = "lmaas_capitals,lmaas_counting"
    argv += ["--include_path", str(tmp_path), "--output_path", str(out), "--log_samples"]
    lm_eval = Path(sys.executable).with_name("lm_eval")
    run = subprocess.run(
        [str(lm_eval), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **OFFLINE},
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-4000:]

    # Loglikelihood: lm-eval's per-choice sums are /v1/score's, and so is the accuracy.
    samples = sorted(_samples(out, "lmaas_capitals"), key=lambda s: s["doc_id"])
    assert len(samples) == len(CAPITALS)
    lm_eval_correct = 0
    score_correct = 0
    for sample, (question, choices, answer) in zip(samples, CAPITALS, strict=True):
        lls = [float(resp[0][0]) for resp in sample["resps"]]  # (written as strings)
        scored = httpx.post(
            f"{server.url}/v1/score",
            json={
                "model": MODEL,
                "input": [{"prompt": question, "continuation": " " + c} for c in choices],
            },
            timeout=60,
        ).json()["data"]
        totals = [d["total_logprob"] for d in scored]
        assert lls == pytest.approx(totals, abs=2e-3), (question, lls, totals)
        lm_eval_correct += sample["acc"]
        score_correct += int(max(range(len(totals)), key=totals.__getitem__) == answer)
    results = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())["results"]
    assert results["lmaas_capitals"]["acc,none"] == pytest.approx(score_correct / len(CAPITALS))
    assert lm_eval_correct == score_correct

    # generate_until: what lm-eval got is the server's greedy answer to the same prompt.
    generated = sorted(_samples(out, "lmaas_counting"), key=lambda s: s["doc_id"])
    assert len(generated) == len(COUNTING)
    eos = httpx.get(f"{server.url}/tokenizer_info").json()["eos_token"]
    for sample, prompt in zip(generated, COUNTING, strict=True):
        direct = httpx.post(
            f"{server.url}/v1/completions",
            json={
                "model": MODEL,
                "prompt": prompt,
                "max_tokens": 6,
                "temperature": 0,
                "stop": ["\n", eos],
            },
            timeout=60,
        ).json()["choices"][0]["text"]
        assert sample["resps"][0][0] == direct, (prompt, sample["resps"])
    assert "exact_match,none" in results["lmaas_counting"]
