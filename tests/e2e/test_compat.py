"""Compatibility routes, fill-mask and the metrics against a real `lmaas serve` (SmolLM2 on
llama.cpp, MiniLM on transformers, and a tiny masked LM built here and uploaded through the
admin API): /generate and /embed with their original shapes, contextual token vectors, the
masked LM's guesses equal to the model's own, refusals, and what /metrics shows after."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.admin import new_key
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess
from tests.tiny_models import tar_of, tiny_masked_lm

pytestmark = pytest.mark.e2e

ENCODER = "all-minilm-l6-v2"
MLM = "tiny-mlm"


class Server(ServerProcess):
    key = ""
    mlm: Any = None  # the masked LM as built, to compare the server's answers with
    mlm_folder: Path | None = None

    def post(self, path: str, body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=180)

    def ok(self, path: str, body: Any) -> Any:
        r = self.post(path, body)
        assert r.status_code == 200, r.text
        return r.json()

    def metrics(self, accept: str | None = None) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        return httpx.get(self.url + "/metrics", headers=headers, timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = Path(tmp_path_factory.mktemp("lmaas-compat"))
    proc = Server(home)
    try:
        proc.wait_ready()
        proc.key = new_key(home, "admin", name="ops")
        folder = Path(tmp_path_factory.mktemp("tiny-mlm"))
        proc.mlm, proc.mlm_folder = tiny_masked_lm(folder), folder
        r = httpx.post(
            f"{proc.url}/admin/models/{MLM}/versions",
            content=tar_of(folder),
            headers={"Authorization": f"Bearer {proc.key}", "Content-Type": "application/x-tar"},
            timeout=120,
        )
        assert r.status_code == 201, r.text
        r = proc.post("/admin/deployments", {"model": MLM, "wait": True})
        assert r.status_code == 201 and r.json()["state"] == "ready", r.text
        yield proc
    finally:
        proc.stop()


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return dict(r.json()["error"])


# --- /generate ----------------------------------------------------------------------------


def test_generate_is_the_greedy_completion_of_the_first_generation_model(server: Server) -> None:
    body = server.ok("/generate", {"text": "The capital of France is", "max_tokens": 8})
    assert set(body) == {"result"} and body["result"].strip()
    completion = server.ok(
        "/v1/completions",
        {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0},
    )
    assert body["result"] == completion["choices"][0]["text"]


def test_generate_refuses_a_model_that_cannot_and_unknown_fields(server: Server) -> None:
    error = error_of(server.post("/generate", {"text": "hi", "model": ENCODER}), 400)
    assert error["param"] == "model" and MODEL in error["message"]
    assert "n" in error_of(server.post("/generate", {"text": "hi", "n": 2}), 400)["message"]


# --- /embed -------------------------------------------------------------------------------


def bank(server: Server, sentence: str) -> np.ndarray[Any, Any]:
    result = server.ok("/embed", {"sentence": sentence})["result"]
    assert all(set(item) == {"token", "embedding"} for item in result)
    (vector,) = [item["embedding"] for item in result if item["token"] == "bank"]
    v = np.array(vector)
    return v / np.linalg.norm(v)


def test_embed_gives_each_token_a_contextual_vector(server: Server) -> None:
    result = server.ok("/embed", {"sentence": "I sat on the river bank."})["result"]
    assert [item["token"] for item in result] == ["i", "sat", "on", "the", "river", "bank", "."]
    assert {len(item["embedding"]) for item in result} == {384}
    river = bank(server, "I sat on the river bank.")
    river_again = bank(server, "We walked along the river bank.")
    money = bank(server, "I opened a bank account.")
    np.testing.assert_allclose(bank(server, "I sat on the river bank."), river, atol=1e-6)
    assert river @ money < 0.9  # the same word, another meaning: another vector
    assert river @ river_again > river @ money + 0.1  # the same meaning is closer


def test_embed_refuses_a_model_that_is_no_encoder(server: Server) -> None:
    error = error_of(server.post("/embed", {"sentence": "a bank", "model": MODEL}), 400)
    assert error["code"] == "unsupported_task" and ENCODER in error["message"]
    assert error_of(server.post("/embed", {"sentence": "a", "extra": 1}), 400)


# --- /v1/fill_mask ------------------------------------------------------------------------


def test_fill_mask_guesses_what_the_model_itself_guesses(server: Server) -> None:
    assert server.mlm_folder is not None
    from transformers import AutoTokenizer

    texts = ["the capital of france is [MASK] .", "the capital of [MASK] is rome ."]
    body = server.ok("/v1/fill_mask", {"model": MLM, "input": texts, "top_k": 3})
    assert body["model"] == MLM and len(body["data"]) == 2
    first = body["data"][0]["masks"][0]["predictions"][0]
    assert first["token"] == "paris" and first["sequence"] == "the capital of france is paris."
    tokenizer = AutoTokenizer.from_pretrained(str(server.mlm_folder))
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = server.mlm(**enc).logits
    for i, item in enumerate(body["data"]):
        (mask,) = item["masks"]
        probs = torch.softmax(logits[i, mask["position"]], -1).topk(3)
        assert [p["token_id"] for p in mask["predictions"]] == probs.indices.tolist()
        got = [p["score"] for p in mask["predictions"]]
        np.testing.assert_allclose(got, probs.values.numpy(), atol=1e-4)
    default = server.ok("/v1/fill_mask", {"input": texts[0], "top_k": 1})
    assert default["model"] == MLM  # the one served model that can
    models = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {server.key}"})
    (card,) = [m for m in models.json()["data"] if m["id"] == MLM]
    assert card["mask_token"] == "[MASK]" and "fill_mask" in card["capabilities"]


def test_fill_mask_refusals(server: Server) -> None:
    no_mask = server.post("/v1/fill_mask", {"model": MLM, "input": "the capital is paris ."})
    error = error_of(no_mask, 400)
    assert error["code"] == "missing_mask_token" and "[MASK]" in error["message"]
    wrong = error_of(server.post("/v1/fill_mask", {"model": MLM, "input": "a <mask> b"}), 400)
    assert wrong["code"] == "missing_mask_token"
    cannot = error_of(server.post("/v1/fill_mask", {"model": ENCODER, "input": "a [MASK]"}), 400)
    assert cannot["code"] == "unsupported_task" and MLM in cannot["message"]
    assert error_of(server.post("/v1/fill_mask", {"model": MODEL, "input": "a [MASK]"}), 400)
    assert error_of(server.post("/v1/fill_mask", {"input": "a [MASK]", "top_k": 0}), 400)


# --- metrics ------------------------------------------------------------------------------


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_metrics_after_real_requests(server: Server) -> None:
    server.ok("/generate", {"text": "Hello", "max_tokens": 2})
    server.ok("/embed", {"sentence": "Hello"})
    server.ok("/v1/fill_mask", {"input": "the [MASK] of france"})
    for _ in range(30):
        r = server.post(f"/v1/{secrets.token_hex(8)}", {"model": MODEL})
        assert r.status_code == 404
    r = server.metrics()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    endpoints = {dict(k)["endpoint"] for k in samples(text, "lmaas_requests_total")}
    assert {"/generate", "/embed", "/v1/fill_mask", "other"} <= endpoints
    routes = set(httpx.get(f"{server.url}/openapi.json", timeout=30).json()["paths"])
    assert endpoints - {"other"} <= routes  # 30 random paths added one label value: other
    kv = samples(text, "lmaas_kv_cache_usage_ratio")
    assert (("model", MODEL), ("replica", "0")) in kv
    assert 0 <= kv[(("model", MODEL), ("replica", "0"))] <= 1
    capacity = samples(text, "lmaas_kv_cache_capacity_cells")
    assert capacity[(("model", MODEL), ("replica", "0"))] > 0
    reasons = samples(text, "lmaas_request_finish_reasons_total")
    assert reasons[(("model", MODEL), ("reason", "length"))] >= 1
    assert samples(text, "lmaas_request_generation_tokens_count")[(("model", MODEL),)] >= 1
    assert (("model", MODEL), ("reason", "kv_cache")) in samples(text, "lmaas_preemptions_total")
    keys = samples(text, "lmaas_key_requests_total")
    assert any(dict(k)["key_name"] == "ops" and v >= 3 for k, v in keys.items())
    assert server.key not in text
    om = server.metrics("application/openmetrics-text; version=1.0.0")
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")
