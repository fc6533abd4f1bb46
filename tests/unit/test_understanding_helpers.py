"""Pure helpers of the understanding endpoints: input shapes, base64 vectors, dimensions,
hypothesis templates, NLI label mapping, perplexity, the linear head."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from lmaas.errors import InvalidRequestError
from lmaas.gateway.serving.classify import nli_label_order
from lmaas.gateway.serving.embeddings import encode_vector, normalize_input, shorten
from lmaas.gateway.serving.scoring import score_entry
from lmaas.gateway.serving.tasks import TaskServing, softmax, split_template
from lmaas.jobs.linear_head import HEAD_FILE, HEAD_WEIGHTS, fit_linear_head
from lmaas.protocol.tasks import TaskRequest, TaskResult
from tests.fakes import fake_info


def test_openai_input_shapes() -> None:
    assert normalize_input("hi") == (["hi"], None)
    assert normalize_input(["a", "b"]) == (["a", "b"], None)
    assert normalize_input([1, 2, 3]) == (None, [[1, 2, 3]])
    assert normalize_input([[1], [2, 3]]) == (None, [[1], [2, 3]])
    assert normalize_input([]) == ([], None)


def test_base64_is_little_endian_float32_as_the_openai_sdk_decodes_it() -> None:
    vector = np.array([0.5, -1.25, 3.0e-8, 7.0], dtype=np.float32)
    encoded = encode_vector(vector, "base64")
    assert isinstance(encoded, str)
    raw = base64.b64decode(encoded)
    assert len(raw) == 16 and raw[:4] == np.float32(0.5).tobytes()  # x86 and the spec: LE
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), vector)
    floats = encode_vector(vector, "float")
    assert list(floats) == [0.5, -1.25, pytest.approx(3.0e-8), 7.0]


def test_dimensions_cut_and_renormalise() -> None:
    vectors = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    cut = shorten(vectors, 2)
    np.testing.assert_allclose(cut, [[0.6, 0.8], [1.0, 0.0]], atol=1e-6)
    assert shorten(vectors, None) is vectors and shorten(vectors, 3) is vectors
    with pytest.raises(InvalidRequestError) as err:
        shorten(vectors, 4)
    assert err.value.param == "dimensions"


def test_hypothesis_template_split_keeps_the_space_with_the_label() -> None:
    assert split_template("This text is about {}.") == ("This text is about", " {}.")
    assert split_template("{} it is") == ("", "{} it is")
    # No brace but the slot's: the label is put in with str.replace, never str.format.
    for bad in ("no slot", "{} and {}", "{} {x}", "{} {0.__class__}", "{} {:>999999999}", "{{}}"):
        with pytest.raises(InvalidRequestError) as err:
            split_template(bad)
        assert err.value.param == "hypothesis_template"


def test_softmax_is_stable_for_large_log_likelihoods() -> None:
    probs = softmax([-1000.0, -1001.0, -1002.0])
    assert sum(probs) == pytest.approx(1.0)
    assert probs[0] > probs[1] > probs[2] and probs[0] == pytest.approx(0.665, abs=1e-3)


def test_nli_labels_map_whatever_their_order_and_spelling() -> None:
    assert nli_label_order(["entailment", "neutral", "contradiction"]) == [0, 1, 2]
    assert nli_label_order(["CONTRADICTION", "ENTAILMENT", "NEUTRAL"]) == [1, 2, 0]
    assert nli_label_order(["contradicts", "entails", "neutral"]) == [1, 2, 0]
    for bad in (["LABEL_0", "LABEL_1", "LABEL_2"], ["entailment", "not_entailment"]):
        with pytest.raises(InvalidRequestError) as err:
            nli_label_order(bad)
        assert err.value.param == "model"


def test_score_entry_perplexity() -> None:
    entry = score_entry(0, [-1.0, -3.0], ["a", "b"])
    assert entry["total_logprob"] == -4.0 and entry["mean_logprob"] == -2.0
    assert entry["perplexity"] == pytest.approx(np.exp(2.0))
    assert score_entry(1, [], [])["perplexity"] is None


def test_too_long_score_inputs_keep_their_end() -> None:
    info = fake_info("m")
    info.max_model_len = 4
    seqs, starts = TaskServing._fit(info, [[1, 2, 3, 4, 5, 6], [7, 8]], [4, 1], truncate=True)
    assert seqs == [[3, 4, 5, 6], [7, 8]] and starts == [2, 1]
    with pytest.raises(InvalidRequestError) as err:
        TaskServing._fit(info, [[1, 2, 3, 4, 5]], [1], truncate=False)
    assert err.value.param == "input" and err.value.code == "context_length_exceeded"


def test_task_frames_survive_msgpack() -> None:
    import msgpack

    req = TaskRequest(request_id="r", kind="classify", pairs=[("p", "h")], truncate=True)
    wire = msgpack.unpackb(msgpack.packb(req.model_dump(), use_bin_type=True), raw=False)
    assert TaskRequest.model_validate(wire) == req
    res = TaskResult(request_id="r", embeddings=np.ones(3, dtype="<f4").tobytes(), dim=3)
    wire = msgpack.unpackb(msgpack.packb(res.model_dump(), use_bin_type=True), raw=False)
    assert TaskResult.model_validate(wire) == res


def test_linear_head_separates_clusters_and_saves_without_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    x = np.concatenate([c + 0.3 * rng.normal(size=(20, 16)) for c in centers]).astype(np.float32)
    labels = [name for name in ("b", "c", "a") for _ in range(20)]
    head = fit_linear_head(x, labels)
    assert head.labels == ["a", "b", "c"] and head.train_accuracy == 1.0
    probs = head.probs(x)
    assert probs.shape == (60, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    head.save(tmp_path, base_model="base")
    config = json.loads((tmp_path / HEAD_FILE).read_text())
    assert config["labels"] == ["a", "b", "c"] and config["base_model"] == "base"
    weights = load_file(str(tmp_path / HEAD_WEIGHTS))
    np.testing.assert_array_equal(weights["weight"], head.weight)
    with pytest.raises(ValueError):
        fit_linear_head(x[:5], ["a"] * 5)
