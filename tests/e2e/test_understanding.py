"""The understanding endpoints against a real `lmaas serve` (SmolLM2 on llama.cpp, MiniLM on
transformers): embeddings, zero-shot and trained classifiers, NLI, scoring, tokenize."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.e2e.admin import new_key
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess
from tests.tiny_models import MINILM, save_with_minilm_tokenizer, tar_of

pytestmark = pytest.mark.e2e

EMBEDDER = "all-minilm-l6-v2"


class Server(ServerProcess):
    """The module's server and the admin key every request carries (the admin routes need
    one; with a key in the catalog, inference routes want one too)."""

    key = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = Path(tmp_path_factory.mktemp("lmaas-understanding"))
    proc = Server(home)
    try:
        proc.wait_ready()
        proc.key = new_key(home, "admin")
        yield proc
    finally:
        proc.stop()


def call(server: Server, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=server.headers, timeout=180, **kw)


def post(server: Server, path: str, body: dict[str, Any]) -> Any:
    r = call(server, path, body)
    assert r.status_code in (200, 201), r.text
    return r.json()


def embed(server: Server, texts: list[str]) -> np.ndarray[Any, Any]:
    data = post(server, "/v1/embeddings", {"model": EMBEDDER, "input": texts})["data"]
    return np.array([d["embedding"] for d in data], dtype=np.float64)


# --- embeddings -------------------------------------------------------------------------

PARAPHRASES = [
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The weather is cold and rainy today.", "It is a chilly, wet day."),
    ("She bought a new car last week.", "Last week she purchased a new automobile."),
    ("The children are laughing in the park.", "Kids are giggling at the playground."),
    ("How do I reset my password?", "What are the steps to change my password?"),
]


def test_paraphrases_are_closer_than_unrelated_sentences(server: Server) -> None:
    firsts = embed(server, [a for a, _ in PARAPHRASES])
    seconds = embed(server, [b for _, b in PARAPHRASES])
    assert np.allclose(np.linalg.norm(firsts, axis=1), 1, atol=1e-4)
    sims = firsts @ seconds.T  # unit vectors: cosine similarity
    for i in range(len(PARAPHRASES)):
        unrelated = [sims[i, j] for j in range(len(PARAPHRASES)) if j != i]
        assert sims[i, i] > max(unrelated) + 0.1, (i, sims[i])


def test_batched_and_single_embeddings_are_equal(server: Server) -> None:
    texts = [t for pair in PARAPHRASES for t in pair]
    batched = embed(server, texts)
    singles: dict[int, np.ndarray[Any, Any]] = {}

    def one(i: int) -> None:
        singles[i] = embed(server, [texts[i]])[0]

    # Concurrent single requests: the worker batches them with each other.
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(texts)):
        np.testing.assert_allclose(singles[i], batched[i], rtol=0, atol=1e-5)


def test_openai_sdk_gets_base64_embeddings_and_dimensions(server: Server) -> None:
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)
    r = sdk.embeddings.create(model=EMBEDDER, input=["hello world", "goodbye"])  # base64 on wire
    assert [len(d.embedding) for d in r.data] == [384, 384]
    assert r.usage.prompt_tokens == 7  # [CLS] hello world [SEP] + [CLS] goodbye [SEP]
    full = embed(server, ["hello world"])[0]
    np.testing.assert_allclose(r.data[0].embedding, full, atol=1e-6)
    short = sdk.embeddings.create(model=EMBEDDER, input="hello world", dimensions=64)
    vec = np.array(short.data[0].embedding)
    assert vec.shape == (64,) and abs(np.linalg.norm(vec) - 1) < 1e-5


def test_generation_model_embeds_mean_pooled(server: Server) -> None:
    texts = [PARAPHRASES[0][0], PARAPHRASES[0][1], PARAPHRASES[2][0]]
    data = post(server, "/v1/embeddings", {"model": MODEL, "input": texts})["data"]
    vecs = np.array([d["embedding"] for d in data])
    assert vecs.shape == (3, 576) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]


def test_embeddings_refusals(server: Server) -> None:
    long = "word " * 400
    r = call(server, "/v1/embeddings", {"model": EMBEDDER, "input": long})
    # Refused in the worker's task loop; the body is the same as a gateway refusal's.
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "message": "input 0 is 402 tokens; this model reads at most 256; shorten it or set "
            "truncate: true",
            "type": "invalid_request_error",
            "param": "input",
            "code": "context_length_exceeded",
        }
    }
    ok = post(server, "/v1/embeddings", {"model": EMBEDDER, "input": long, "truncate": True})
    assert ok["usage"]["prompt_tokens"] == 256


# --- zero-shot classification and scoring with the generation model ---------------------

ZERO_SHOT = [
    ("The striker scored twice and the team won the championship final.", "sports"),
    ("The goalkeeper saved a penalty in the last minute of the match.", "sports"),
    ("She ran the marathon in under three hours and won a gold medal.", "sports"),
    ("The tennis player won the match in straight sets.", "sports"),
    ("Parliament voted on the new tax law after a long debate.", "politics"),
    ("The president met the prime minister to discuss the election.", "politics"),
    ("The senator announced a campaign for the next election.", "politics"),
    ("The government passed a bill to reform the voting system.", "politics"),
    ("Bake the bread for forty minutes and add butter and garlic.", "food"),
    ("The soup needs more salt, pepper and fresh tomatoes.", "food"),
    ("This pasta recipe uses cheese, cream and mushrooms.", "food"),
    ("We ate delicious pizza and chocolate cake for dinner.", "food"),
]


def test_zero_shot_classification_beats_chance(server: Server) -> None:
    out = post(
        server,
        "/v1/classify",
        {
            "model": MODEL,
            "input": [t for t, _ in ZERO_SHOT],
            "candidate_labels": ["sports", "politics", "food"],
        },
    )
    predicted = [d["label"] for d in out["data"]]
    correct = sum(p == gold for p, (_, gold) in zip(predicted, ZERO_SHOT, strict=True))
    for d in out["data"]:
        assert abs(sum(x["score"] for x in d["labels"]) - 1) < 1e-6
    # Chance is 4 of 12.
    assert correct >= 9, list(zip(predicted, ZERO_SHOT, strict=True))


def test_classify_needs_labels_or_a_classifier(server: Server) -> None:
    r = call(server, "/v1/classify", {"model": MODEL, "input": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "candidate_labels"
    r = call(
        server, "/v1/classify", {"model": EMBEDDER, "input": "hi", "candidate_labels": ["a", "b"]}
    )
    assert r.status_code == 400 and MODEL in r.json()["error"]["message"]


FLUENT = [
    "The cat sat on the mat and looked out of the window.",
    "I would like a cup of coffee with milk, please.",
    "The train to London leaves from platform four at nine o'clock.",
    "She opened the door and walked into the kitchen.",
]


def test_fluent_text_has_lower_perplexity_than_shuffled_words(server: Server) -> None:
    rng = random.Random(7)
    shuffled = []
    for text in FLUENT:
        words = text.split()
        while words == text.split():
            rng.shuffle(words)
        shuffled.append(" ".join(words))
    out = post(server, "/v1/score", {"model": MODEL, "input": FLUENT + shuffled})["data"]
    for i in range(len(FLUENT)):
        fluent, mixed = out[i], out[i + len(FLUENT)]
        assert fluent["perplexity"] < mixed["perplexity"], (fluent, mixed)
        assert len(fluent["token_logprobs"]) == fluent["num_tokens"] > 5
        assert fluent["total_logprob"] == pytest.approx(sum(fluent["token_logprobs"]))


def test_score_of_a_continuation_matches_completions_echo(server: Server) -> None:
    pair = {"prompt": "The capital of France is", "continuation": " Paris"}
    scored = post(server, "/v1/score", {"model": MODEL, "input": pair})["data"][0]
    assert scored["tokens"] == [" Paris"]
    echo = post(
        server,
        "/v1/completions",
        {
            "model": MODEL,
            "prompt": "The capital of France is Paris",
            "max_tokens": 0,
            "echo": True,
            "logprobs": 0,
        },
    )
    last = echo["choices"][0]["logprobs"]["token_logprobs"][-1]
    assert scored["total_logprob"] == pytest.approx(last, abs=1e-3)
    assert scored["total_logprob"] > -3  # the model knows this one


def test_tokenize_detokenize_round_trip(server: Server) -> None:
    text = "Hello world, this is lmaas! Ünïcödé too."
    for model in (MODEL, EMBEDDER):
        tok = post(server, "/tokenize", {"model": model, "prompt": text})
        assert tok["count"] == len(tok["tokens"]) > 5 and tok["max_model_len"] > 0
        back = post(server, "/detokenize", {"model": model, "tokens": tok["tokens"]})["prompt"]
        # MiniLM's tokenizer is uncased and strips accents; SmolLM2's is lossless.
        assert (
            back == text if model == MODEL else back == "hello world, this is lmaas! unicode too."
        )
    r = call(server, "/detokenize", {"model": MODEL, "tokens": [10**9]})
    # Refused by the llama.cpp worker's reader thread, raised again in the gateway.
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["message"].startswith("token id 1000000000 is outside the vocabulary (0..")
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "tokens" and error["code"] is None


# --- a classifier trained from labelled examples ------------------------------------------

TOPICS = {
    "sports": (
        ["the team", "the striker", "our coach", "the goalkeeper", "the runner", "the club"],
        [
            "won the match",
            "scored a late goal",
            "trained for the final",
            "lost on penalties",
            "broke the record",
            "celebrated the league title",
        ],
    ),
    "cooking": (
        ["the chef", "my grandmother", "the baker", "our cook", "the waiter", "my friend"],
        [
            "baked fresh bread",
            "stirred the tomato soup",
            "seasoned the roast chicken",
            "chopped the onions",
            "served a chocolate dessert",
            "fried the eggs in butter",
        ],
    ),
    "technology": (
        [
            "the engineer",
            "the startup",
            "our developer",
            "the company",
            "the programmer",
            "the lab",
        ],
        [
            "released a new smartphone",
            "fixed a bug in the software",
            "deployed the server",
            "trained a neural network",
            "upgraded the laptop",
            "wrote code for the app",
        ],
    ),
    "weather": (
        [
            "the forecast",
            "the radio",
            "the meteorologist",
            "the news",
            "my neighbour",
            "the weather service",
        ],
        [
            "warned of heavy rain",
            "predicted snow tonight",
            "reported a strong storm",
            "expected sunny skies",
            "mentioned thick fog",
            "announced a heatwave",
        ],
    ),
}


def labelled_sentences() -> list[tuple[str, str]]:
    rows = []
    for label, (subjects, predicates) in TOPICS.items():
        for s in subjects:
            for p in predicates:
                rows.append((f"{s.capitalize()} {p} yesterday.", label))
    random.Random(3).shuffle(rows)
    return rows  # 4 topics x 36 sentences


def test_trained_classifier_beats_chance_on_held_out_sentences(
    server: Server, tmp_path: Path
) -> None:
    rows = labelled_sentences()
    train, test = rows[:108], rows[108:]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in train))
    env = {**os.environ, "LMAAS_URL": server.url, "LMAAS_API_KEY": server.key}
    done = subprocess.run(
        [sys.executable, "-m", "lmaas", "classifiers", "train", "topics", "--data", str(data)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "topics version 1" in done.stdout and "ready" in done.stdout
    out = post(server, "/v1/classify", {"model": "topics", "input": [t for t, _ in test]})
    predicted = [d["label"] for d in out["data"]]
    accuracy = np.mean([p == y for p, (_, y) in zip(predicted, test, strict=True)])
    assert accuracy >= 0.8, accuracy  # chance is 0.25
    assert set(out["data"][0]["labels"][0]) == {"label", "score"}
    # The classifier is its own model in the store, and a classifier refuses zero-shot use.
    r = call(
        server, "/v1/classify", {"model": "topics", "input": "x", "candidate_labels": ["a", "b"]}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "candidate_labels"
    version = httpx.get(
        f"{server.url}/admin/models/topics/versions/1", headers=server.headers, timeout=30
    ).json()
    assert version["format"] == "hf", version


def test_training_refuses_bad_examples(server: Server) -> None:
    one_label = [{"text": f"text {i}", "label": "a"} for i in range(4)]
    r = call(server, "/admin/classifiers", {"name": "bad", "examples": one_label})
    assert r.status_code == 400 and r.json()["error"]["param"] == "examples"
    r = call(server, "/admin/classifiers", {"name": "bad", "model": MODEL, "examples": one_label})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


# --- an NLI sequence-classification model built here, uploaded, deployed -----------------

NLI_LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}


def build_nli_model(folder: Path) -> Any:
    """A one-layer BERT classifier with random weights, MiniLM's tokenizer, NLI labels."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    base = json.loads((MINILM / "config.json").read_text())
    base.update(
        architectures=["BertForSequenceClassification"],
        num_hidden_layers=1,
        id2label={str(k): v for k, v in NLI_LABELS.items()},
        label2id={v: k for k, v in NLI_LABELS.items()},
    )
    base.pop("_name_or_path", None)
    config = BertConfig(**base)
    return save_with_minilm_tokenizer(BertForSequenceClassification(config).eval(), folder)


def test_nli_classifier_uploaded_deployed_and_labels_mapped(server: Server, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = tmp_path / "nli"
    model = build_nli_model(folder)
    r = httpx.post(
        f"{server.url}/admin/models/nli-tiny/versions",
        content=tar_of(folder),
        headers={**server.headers, "Content-Type": "application/x-tar"},
        timeout=120,
    )
    assert r.status_code == 201, r.text
    r = call(server, "/admin/deployments", {"model": "nli-tiny", "wait": True})
    assert r.status_code == 201 and r.json()["state"] == "ready", r.text
    pairs = [
        ("A man is sleeping.", "A man is awake."),
        ("A dog runs in the park.", "An animal is outside."),
    ]
    out = post(
        server,
        "/v1/nli",
        {"model": "nli-tiny", "input": [{"premise": p, "hypothesis": h} for p, h in pairs]},
    )
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    import torch

    with torch.inference_mode():
        enc = tokenizer(
            [p for p, _ in pairs], [h for _, h in pairs], padding=True, return_tensors="pt"
        )
        expected = torch.softmax(model(**enc).logits, dim=-1).numpy()
    for row, item in zip(expected, out["data"], strict=True):
        for idx, name in NLI_LABELS.items():
            assert item["scores"][name] == pytest.approx(float(row[idx]), abs=1e-5)
        assert item["label"] == NLI_LABELS[int(row.argmax())]
    # A classifier cannot embed: the 400 names the models that can.
    r = call(server, "/v1/embeddings", {"model": "nli-tiny", "input": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert EMBEDDER in r.json()["error"]["message"]
    # The same model answers /v1/classify with its own labels.
    plain = post(server, "/v1/classify", {"model": "nli-tiny", "input": "A man is sleeping."})
    assert {x["label"] for x in plain["data"][0]["labels"]} == set(NLI_LABELS.values())
    # NLI by the generation model, zero-shot: the three relations, summing to one.
    gen = post(server, "/v1/nli", {"model": MODEL, "input": {"premise": "p", "hypothesis": "h"}})
    assert abs(sum(gen["data"][0]["scores"].values()) - 1) < 1e-6
