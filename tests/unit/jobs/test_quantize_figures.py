"""The arithmetic of the quantization figures, on hand-made logits and a fake llama.cpp model,
and a measurement whose child process fails."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from lmaas.jobs import quantize_figures
from lmaas.jobs.quantize_figures import (
    FiguresError,
    builtin_text,
    measure,
    negative_log_likelihood,
    perplexity,
    windows,
)


def test_negative_log_likelihood_is_the_log_softmax_of_the_targets() -> None:
    logits = np.array([[0.0, math.log(3.0)], [2.0, 2.0]], dtype=np.float32)
    # softmax rows: [1/4, 3/4] and [1/2, 1/2]; targets 1 then 0.
    expected = -math.log(0.75) - math.log(0.5)
    assert negative_log_likelihood(logits, [1, 0]) == pytest.approx(expected, rel=1e-6)
    huge = np.array([[1000.0, 0.0]])  # no overflow: the max is taken out first
    assert negative_log_likelihood(huge, [0]) == pytest.approx(0.0, abs=1e-9)


def test_windows_predict_every_token_once() -> None:
    assert windows(list(range(7)), [99], 4) == [[99, 0, 1, 2], [99, 3, 4, 5], [99, 6]]
    # Without a BOS, a window starts with the last token of the one before, as context.
    assert windows(list(range(7)), [], 4) == [[0, 1, 2, 3], [3, 4, 5, 6]]
    assert windows(list(range(8)), [], 4) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7]]
    assert windows([5], [], 4) == []  # nothing to predict


class UniformModel:
    """A llama-cpp-python stand-in whose every next-token distribution is uniform over
    ``vocab`` tokens, so that any text's perplexity is exactly ``vocab``."""

    def __init__(self, vocab: int, bos: int | None) -> None:
        self.vocab, self.bos = vocab, bos
        self.evaluated: list[list[int]] = []
        self.scores = np.zeros((0, vocab), dtype=np.float32)

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        ids = [b % self.vocab for b in text]
        return [self.bos, *ids] if add_bos and self.bos is not None else ids

    def reset(self) -> None:
        self.scores = np.zeros((0, self.vocab), dtype=np.float32)

    def eval(self, tokens: Sequence[int]) -> None:
        self.evaluated.append(list(tokens))
        self.scores = np.full((len(tokens), self.vocab), 0.25, dtype=np.float32)


@pytest.mark.parametrize("bos", [None, 0])
def test_perplexity_of_a_uniform_model_is_its_vocabulary(
    bos: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize_figures, "WINDOW", 8)
    model = UniformModel(50, bos)
    ppl, scored = perplexity(model, "a" * 20)
    assert ppl == pytest.approx(50.0)
    prefix = 0 if bos is None else 1
    assert all(len(w) <= 8 and w[:prefix] == [bos] * prefix for w in model.evaluated)
    assert scored == sum(len(w) - 1 for w in model.evaluated)
    assert scored == (19 if bos is None else 20)  # with a BOS, the first token is predicted too
    assert len(model.evaluated) == 3


def test_a_text_too_short_to_measure_is_refused() -> None:
    with pytest.raises(FiguresError, match="too few tokens"):
        perplexity(UniformModel(50, None), "a")


def test_the_builtin_text_is_a_few_paragraphs_of_english() -> None:
    text = builtin_text()
    assert len(text.split()) > 500 and text.count("\n\n") >= 5


def test_a_failed_measurement_says_why_without_the_servers_paths(tmp_path: Path) -> None:
    text = tmp_path / "held-out.txt"
    text.write_text("Some words.")
    with pytest.raises(FiguresError) as failed:
        measure(tmp_path / "missing.gguf", text, timeout=120)
    message = str(failed.value)
    assert message.startswith("measuring missing.gguf failed:") and "missing.gguf" in message
    assert str(tmp_path) not in message
