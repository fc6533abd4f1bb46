"""The transformers backend on real folders: the shipped MiniLM, a tiny random causal LM and a
linear head, driven the way the task loop drives it (prepare, then one batch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmaas.config import EngineConfig
from lmaas.errors import ContextLengthExceededError, InvalidRequestError
from lmaas.jobs.linear_head import fit_linear_head
from lmaas.protocol.tasks import TaskKind, TaskRequest, TaskResult
from lmaas.worker.backends.transformers.tasks import TransformersBackend
from tests.tiny_models import MINILM, save_with_minilm_tokenizer, tiny_llama


def run(backend: TransformersBackend, kind: TaskKind, **fields: Any) -> TaskResult:
    request = TaskRequest(request_id="r", kind=kind, **fields)
    return backend.run_batch(kind, [backend.prepare(request)])[0]


def vectors(result: TaskResult) -> np.ndarray[Any, Any]:
    return np.frombuffer(result.embeddings or b"", dtype="<f4").reshape(-1, result.dim or 1)


@pytest.fixture(scope="module")
def minilm() -> TransformersBackend:
    return TransformersBackend("minilm", MINILM, EngineConfig(max_task_batch=4))


def test_embeddings_match_across_batch_shapes(minilm: TransformersBackend) -> None:
    texts = ["a short one", "a much longer sentence with quite a few more words in it", "x"] * 3
    together = vectors(run(minilm, "embed", texts=texts))  # 9 inputs: chunks of 4
    for i, text in enumerate(texts[:3]):
        alone = vectors(run(minilm, "embed", texts=[text]))[0]
        np.testing.assert_allclose(alone, together[i], atol=1e-5)
    ids = run(minilm, "tokenize", texts=["a short one"], add_special=False).token_ids
    by_ids = vectors(run(minilm, "embed", token_ids=ids))[0]
    np.testing.assert_allclose(by_ids, together[0], atol=1e-5)


def test_length_limit_and_truncation(minilm: TransformersBackend) -> None:
    long = "word " * 300
    with pytest.raises(ContextLengthExceededError) as err:
        minilm.prepare(TaskRequest(request_id="r", kind="embed", texts=[long]))
    assert err.value.param == "input"
    result = run(minilm, "embed", texts=[long], truncate=True)
    assert result.prompt_tokens == 256 and result.truncated == [True]
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        minilm.prepare(TaskRequest(request_id="r", kind="embed", token_ids=[[10**8]]))
    with pytest.raises(InvalidRequestError) as refused:
        minilm.prepare(TaskRequest(request_id="r", kind="score", token_ids=[[1, 2]]))
    assert "embed" in refused.value.message and refused.value.param == "model"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    folder = tmp_path_factory.mktemp("tiny-lm")
    return folder, save_with_minilm_tokenizer(tiny_llama(), folder)


def test_causal_scores_equal_a_direct_forward_pass(tiny_lm: tuple[Path, Any]) -> None:
    folder, model = tiny_lm
    backend = TransformersBackend("tiny", folder, EngineConfig())
    assert backend.kind == "causal" and "score" in backend.info().capabilities
    seqs = [[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102]]
    result = run(backend, "score", token_ids=seqs, score_from=[2, 1])
    for seq, start, got in zip(seqs, [2, 1], result.logprobs or [], strict=True):
        with torch.inference_mode():
            logits = model(torch.tensor([seq])).logits[0]
        want = torch.log_softmax(logits, -1)[torch.arange(start - 1, len(seq) - 1), seq[start:]]
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    assert [len(t) for t in result.tokens or []] == [4, 2]


def test_linear_head_folder_classifies(tmp_path: Path, minilm: TransformersBackend) -> None:
    texts = ["I love football", "the match was great", "bake a cake", "cook the pasta"]
    labels = ["sport", "sport", "food", "food"]
    head = fit_linear_head(vectors(run(minilm, "embed", texts=texts)), labels)
    folder = tmp_path / "head"
    shutil.copytree(MINILM, folder)
    head.save(folder, base_model="minilm")
    backend = TransformersBackend("head", folder, EngineConfig())
    info = backend.info()
    assert info.labels == ["food", "sport"] and "classify" in info.capabilities
    result = run(backend, "classify", texts=["football match tonight", "a cake recipe"])
    assert [int(np.argmax(p)) for p in result.probs or []] == [1, 0]
    assert json.loads((folder / "lmaas_head.json").read_text())["labels"] == ["food", "sport"]
