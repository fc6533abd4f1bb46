"""The transformers backend's token-level tasks on real models, driven as the task loop drives
them: fill_mask on a tiny masked LM built here, embed_tokens on the shipped MiniLM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmaas.config import EngineConfig
from lmaas.errors import InvalidRequestError
from lmaas.protocol.tasks import TaskKind, TaskRequest, TaskResult
from lmaas.worker.backends.transformers.tasks import TransformersBackend
from tests.tiny_models import MINILM, tiny_masked_lm


def run(backend: TransformersBackend, kind: TaskKind, **fields: Any) -> TaskResult:
    request = TaskRequest(request_id="r", kind=kind, **fields)
    return backend.run_batch(kind, [backend.prepare(request)])[0]


@pytest.fixture(scope="module")
def masked(tmp_path_factory: pytest.TempPathFactory) -> tuple[TransformersBackend, Any, Path]:
    folder = tmp_path_factory.mktemp("tiny-mlm")
    model = tiny_masked_lm(folder)
    return TransformersBackend("mlm", folder, EngineConfig(max_task_batch=4)), model, folder


@pytest.fixture(scope="module")
def minilm() -> TransformersBackend:
    return TransformersBackend("minilm", MINILM, EngineConfig(max_task_batch=4))


def test_a_masked_lm_fills_its_mask_with_the_model_s_own_probabilities(
    masked: tuple[TransformersBackend, Any, Path],
) -> None:
    backend, model, _ = masked
    info = backend.info()
    assert backend.kind == "masked" and info.mask_token == "[MASK]"
    assert "fill_mask" in info.capabilities and "generate" not in info.capabilities
    texts = ["the capital of france is [MASK] .", "the capital of [MASK] is rome ."]
    result = run(backend, "fill_mask", texts=texts, top_k=3)
    assert result.fills is not None and len(result.fills) == 2
    first = result.fills[0][0]
    assert first.tokens[0] == "paris" and first.sequences[0] == "the capital of france is paris."
    ids = backend.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**ids).logits
    for i, fills in enumerate(result.fills):
        (fill,) = fills
        assert ids["input_ids"][i, fill.position] == backend.tokenizer.mask_token_id
        probs = torch.softmax(logits[i, fill.position], -1)
        want = probs.topk(3)
        assert fill.token_ids == want.indices.tolist()
        np.testing.assert_allclose(fill.scores, want.values.numpy(), atol=1e-5)
        assert fill.scores == sorted(fill.scores, reverse=True)


def test_every_mask_of_an_input_is_filled(masked: tuple[TransformersBackend, Any, Path]) -> None:
    backend, _, _ = masked
    result = run(backend, "fill_mask", texts=["the [MASK] of france is [MASK] ."], top_k=2)
    assert result.fills is not None
    positions = [f.position for f in result.fills[0]]
    assert positions == [2, 6]  # [CLS] the [MASK] of france is [MASK] . [SEP]
    assert all(len(f.token_ids) == 2 for f in result.fills[0])
    # Each sequence fills its own mask and leaves the other one as it was.
    assert all("[MASK]" in s for f in result.fills[0] for s in f.sequences)


@pytest.mark.parametrize("text", ["the capital of france is paris .", "the capital is <mask> ."])
def test_an_input_without_the_model_s_mask_token_is_refused(
    masked: tuple[TransformersBackend, Any, Path], text: str
) -> None:
    backend, _, _ = masked
    with pytest.raises(InvalidRequestError) as err:
        backend.prepare(TaskRequest(request_id="r", kind="fill_mask", texts=[text]))
    assert err.value.code == "missing_mask_token" and err.value.param == "input"
    assert "'[MASK]'" in err.value.message


def test_a_fill_mask_that_asks_for_too_many_filled_sequences_is_refused(
    masked: tuple[TransformersBackend, Any, Path],
) -> None:
    backend, _, _ = masked
    # 30 masks x top_k 100 x 32 tokens (the tiny model's limit), in 12 inputs: 1.15 M tokens
    # of filled-in sequences (each guess comes with its whole input).
    text = " ".join(["[MASK]"] * 30)
    request = TaskRequest(request_id="r", kind="fill_mask", texts=[text] * 12, top_k=100)
    with pytest.raises(InvalidRequestError) as err:
        backend.prepare(request)
    assert err.value.param == "top_k" and "at most 1,000,000" in err.value.message
    small = TaskRequest(request_id="r", kind="fill_mask", texts=[text] * 12, top_k=5)
    assert backend.prepare(small).features  # the same input with a small top_k is fine


def test_models_that_are_not_masked_lms_refuse_fill_mask(minilm: TransformersBackend) -> None:
    with pytest.raises(InvalidRequestError) as err:
        minilm.prepare(TaskRequest(request_id="r", kind="fill_mask", texts=["a [MASK] b"]))
    assert err.value.param == "model" and "cannot fill_mask" in err.value.message


def token_vectors(result: TaskResult) -> np.ndarray[Any, Any]:
    return np.frombuffer(result.embeddings or b"", dtype="<f4").reshape(-1, result.dim or 1)


def test_token_embeddings_are_the_encoder_s_hidden_states_per_token(
    minilm: TransformersBackend,
) -> None:
    texts = ["I sat on the river bank.", "I opened a bank account."]
    result = run(minilm, "embed_tokens", texts=texts)
    assert result.tokens == [
        ["i", "sat", "on", "the", "river", "bank", "."],
        ["i", "opened", "a", "bank", "account", "."],
    ]
    vectors = token_vectors(result)
    assert vectors.shape == (13, 384)
    river_bank, money_bank = vectors[5], vectors[7 + 3]
    cosine = river_bank @ money_bank / np.linalg.norm(river_bank) / np.linalg.norm(money_bank)
    assert cosine < 0.95  # the same word, read in two contexts
    enc = minilm.tokenizer(texts[1], return_tensors="pt")
    with torch.inference_mode():
        hidden = minilm.model(**enc).last_hidden_state[0, 1:-1]  # without [CLS] and [SEP]
    np.testing.assert_allclose(vectors[7:], hidden.numpy(), atol=1e-4)
    alone = token_vectors(run(minilm, "embed_tokens", texts=[texts[1]]))
    np.testing.assert_allclose(alone, vectors[7:], atol=1e-5)  # batching changes nothing


def test_a_masked_lm_embeds_its_tokens_too(masked: tuple[TransformersBackend, Any, Path]) -> None:
    backend, model, _ = masked
    result = run(backend, "embed_tokens", texts=["the capital of france"])
    assert result.tokens == [["the", "capital", "of", "france"]]
    enc = backend.tokenizer("the capital of france", return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc, output_hidden_states=True).hidden_states[-1][0, 1:-1]
    np.testing.assert_allclose(token_vectors(result), hidden.numpy(), atol=1e-5)
