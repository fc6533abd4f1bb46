"""Embeddings, classify, nli, score and tokenize in-process against fake engines: response
shapes, routing by capability, and every bad input answered with a 4xx envelope."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from lmaas.config import Limits, ModelConfig, Settings
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.keys import KeyStore
from tests.bad_inputs import check_error_envelope
from tests.fakes_tasks import DIM, FakeTaskEngine

NLI = ["ENTAILMENT", "NEUTRAL", "CONTRADICTION"]


@pytest.fixture
def engines() -> dict[str, FakeTaskEngine]:
    return {
        "gen": FakeTaskEngine("gen", ["generate", "score", "tokenize"]),
        "emb": FakeTaskEngine("emb", ["embed", "tokenize"]),
        "clf": FakeTaskEngine("clf", ["classify", "tokenize"], ["sports", "politics"]),
        "nli": FakeTaskEngine("nli", ["classify", "tokenize"], NLI),
    }


@pytest.fixture
async def api(
    engines: dict[str, FakeTaskEngine], keys: KeyStore
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        models=[ModelConfig(name=n, path="/fake") for n in engines],
        limits=Limits(max_inputs=4, max_labels=3),
    )
    app = create_app(settings, dict(engines), auth=Authenticator(keys, bind_host="127.0.0.1"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def test_embeddings_float_and_base64_agree(api: httpx.AsyncClient) -> None:
    body = {"model": "emb", "input": ["one two", "three"]}
    floats = (await api.post("/v1/embeddings", json=body)).json()
    assert floats["object"] == "list" and floats["model"] == "emb"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    b64 = (await api.post("/v1/embeddings", json={**body, "encoding_format": "base64"})).json()
    for f, b in zip(floats["data"], b64["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert len(f["embedding"]) == DIM
        np.testing.assert_allclose(decoded, f["embedding"], rtol=0, atol=1e-7)


async def test_embeddings_token_input_and_dimensions(
    api: httpx.AsyncClient, engines: dict[str, FakeTaskEngine]
) -> None:
    r = await api.post("/v1/embeddings", json={"model": "emb", "input": [3, 4], "dimensions": 3})
    assert r.status_code == 200, r.text
    vec = r.json()["data"][0]["embedding"]
    assert len(vec) == 3 and abs(np.linalg.norm(vec) - 1) < 1e-6
    assert engines["emb"].tasks[-1].token_ids == [[3, 4]]


async def test_zero_shot_classify_uses_scores_of_every_label(
    api: httpx.AsyncClient, engines: dict[str, FakeTaskEngine]
) -> None:
    r = await api.post(
        "/v1/classify",
        json={"model": "gen", "input": "a b", "candidate_labels": ["x", "y"]},
    )
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    assert {x["label"] for x in item["labels"]} == {"x", "y"}
    assert abs(sum(x["score"] for x in item["labels"]) - 1) < 1e-9


async def test_classifier_labels_and_nli_mapping(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/classify", json={"model": "clf", "input": ["politics today", "x"]})
    data = r.json()["data"]
    assert [d["label"] for d in data] == ["politics", "sports"]
    assert data[0]["score"] == pytest.approx(0.7)
    r = await api.post(
        "/v1/nli",
        json={"model": "nli", "input": [{"premise": "p", "hypothesis": "CONTRADICTION h"}]},
    )
    item = r.json()["data"][0]
    assert item["label"] == "contradiction"
    assert item["scores"] == pytest.approx(
        {"entailment": 0.15, "neutral": 0.15, "contradiction": 0.7}
    )


async def test_score_and_tokenize_shapes(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/v1/score",
        json={"model": "gen", "input": ["a b c", {"prompt": "a b", "continuation": "c d"}]},
    )
    assert r.status_code == 200, r.text
    first, second = r.json()["data"]
    assert first["num_tokens"] == 2 and first["total_logprob"] == pytest.approx(-2.0)
    assert first["perplexity"] == pytest.approx(np.e)
    assert second["num_tokens"] == 2  # only the continuation is scored
    r = await api.post("/tokenize", json={"model": "emb", "prompt": "ab c"})
    assert r.json()["tokens"] == [2, 1] and r.json()["count"] == 2
    r = await api.post("/detokenize", json={"model": "emb", "tokens": [2, 1]})
    assert r.json()["prompt"] == "w2 w1"


def _emb(**kw: Any) -> dict[str, Any]:
    return {"model": "emb", "input": "hello", **kw}


def _cls(**kw: Any) -> dict[str, Any]:
    return {"model": "gen", "input": "hello", "candidate_labels": ["a", "b"], **kw}


LONG = " ".join(["w"] * 40)

BAD: list[tuple[str, str, dict[str, Any], int, str | None]] = [
    ("emb-empty-string", "/v1/embeddings", _emb(input=""), 400, "input"),
    ("emb-empty-list", "/v1/embeddings", _emb(input=[]), 400, "input"),
    ("emb-empty-item", "/v1/embeddings", _emb(input=["a", ""]), 400, "input"),
    ("emb-too-many", "/v1/embeddings", _emb(input=["a"] * 5), 400, "input"),
    ("emb-wrong-type", "/v1/embeddings", _emb(input=3.5), 400, "input"),
    ("emb-mixed-types", "/v1/embeddings", _emb(input=["a", 1]), 400, "input"),
    ("emb-bad-format", "/v1/embeddings", _emb(encoding_format="hex"), 400, "encoding_format"),
    ("emb-dimensions-zero", "/v1/embeddings", _emb(dimensions=0), 400, "dimensions"),
    ("emb-dimensions-too-big", "/v1/embeddings", _emb(dimensions=DIM + 1), 400, "dimensions"),
    ("emb-too-long", "/v1/embeddings", _emb(input=LONG), 400, "input"),
    ("emb-from-generation-model", "/v1/embeddings", _emb(model="gen"), 400, "model"),
    ("emb-unknown-model", "/v1/embeddings", _emb(model="nope"), 404, "model"),
    ("emb-missing-input", "/v1/embeddings", {"model": "emb"}, 400, "input"),
    ("cls-one-label", "/v1/classify", _cls(candidate_labels=["a"]), 400, "candidate_labels"),
    (
        "cls-too-many-labels",
        "/v1/classify",
        _cls(candidate_labels=list("abcd")),
        400,
        "candidate_labels",
    ),
    (
        "cls-duplicate-labels",
        "/v1/classify",
        _cls(candidate_labels=["a", "a"]),
        400,
        "candidate_labels",
    ),
    ("cls-empty-label", "/v1/classify", _cls(candidate_labels=["a", " "]), 400, "candidate_labels"),
    (
        "cls-template-no-slot",
        "/v1/classify",
        _cls(hypothesis_template="About it."),
        400,
        "hypothesis_template",
    ),
    ("cls-empty-input", "/v1/classify", _cls(input=[]), 400, "input"),
    ("cls-empty-text", "/v1/classify", _cls(input=""), 400, "input"),
    ("cls-too-many", "/v1/classify", _cls(input=["a"] * 5), 400, "input"),
    (
        "cls-too-long",
        "/v1/classify",
        _cls(model="clf", candidate_labels=None, input=LONG),
        400,
        "input",
    ),
    (
        "cls-embedder-no-labels",
        "/v1/classify",
        _cls(model="emb", candidate_labels=None),
        400,
        "candidate_labels",
    ),
    ("cls-zero-shot-on-classifier", "/v1/classify", _cls(model="clf"), 400, "candidate_labels"),
    (
        "cls-generator-no-labels",
        "/v1/classify",
        _cls(candidate_labels=None),
        400,
        "candidate_labels",
    ),
    (
        "cls-labels-wrong-type",
        "/v1/classify",
        _cls(candidate_labels="a,b"),
        400,
        "candidate_labels",
    ),
    ("nli-empty", "/v1/nli", {"model": "nli", "input": []}, 400, "input"),
    (
        "nli-missing-hypothesis",
        "/v1/nli",
        {"model": "nli", "input": {"premise": "p"}},
        400,
        "input.hypothesis",
    ),
    (
        "nli-empty-premise",
        "/v1/nli",
        {"model": "nli", "input": {"premise": "", "hypothesis": "h"}},
        400,
        "input",
    ),
    (
        "nli-wrong-labels",
        "/v1/nli",
        {"model": "clf", "input": {"premise": "p", "hypothesis": "h"}},
        400,
        "model",
    ),
    (
        "nli-embedder",
        "/v1/nli",
        {"model": "emb", "input": {"premise": "p", "hypothesis": "h"}},
        400,
        "model",
    ),
    ("score-empty", "/v1/score", {"model": "gen", "input": []}, 400, "input"),
    ("score-empty-text", "/v1/score", {"model": "gen", "input": ""}, 400, "input"),
    (
        "score-empty-continuation",
        "/v1/score",
        {"model": "gen", "input": {"prompt": "a", "continuation": ""}},
        400,
        "input",
    ),
    ("score-too-long", "/v1/score", {"model": "gen", "input": LONG}, 400, "input"),
    ("score-embedder", "/v1/score", {"model": "emb", "input": "a"}, 400, "model"),
    ("tokenize-missing-prompt", "/tokenize", {"model": "gen"}, 400, "prompt"),
    ("detokenize-wrong-type", "/detokenize", {"model": "gen", "tokens": ["a"]}, 400, "tokens.0"),
    ("tokenize-unknown-model", "/tokenize", {"model": "nope", "prompt": "a"}, 404, "model"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
async def test_bad_input_is_refused_with_an_envelope(
    api: httpx.AsyncClient, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    r = await api.post(path, json=body)
    assert r.status_code == status, r.text
    err = check_error_envelope(r.json())
    assert err["param"] == param, err


async def test_too_long_inputs_are_cut_with_truncate(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/embeddings", json=_emb(input=LONG, truncate=True))
    assert r.status_code == 200, r.text
    r = await api.post("/v1/score", json={"model": "gen", "input": LONG, "truncate": True})
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["num_tokens"] == 15  # the last 16 tokens, the first unscored


async def test_tasks_are_counted_per_model_in_metrics(api: httpx.AsyncClient) -> None:
    await api.post("/v1/embeddings", json=_emb(input=["a", "b"]))
    text = (await api.get("/metrics")).text
    assert 'lmaas_task_inputs_total{model="emb",task="embed"} 2.0' in text
    assert 'lmaas_requests_total{endpoint="/v1/embeddings",model="emb",status="200"}' in text
