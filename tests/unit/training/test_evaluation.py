"""Held-out perplexity: exp of the mean negative log-likelihood over the label tokens."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lmaas.training.data import IGNORE, TokenizedExample
from lmaas.training.evaluation import evaluate, perplexity
from tests.unit.training.conftest import fact_examples


def test_a_model_that_knows_nothing_has_the_vocabulary_as_perplexity(
    tokenizer: Any, model: Any
) -> None:
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: a uniform guess
    assert perplexity(model, fact_examples(tokenizer)) == pytest.approx(len(tokenizer), rel=1e-5)


def test_perplexity_weighs_every_label_token_the_same(tokenizer: Any, model: Any) -> None:
    examples = fact_examples(tokenizer)
    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for example in examples:  # one at a time: no padding
            logp = torch.log_softmax(model(input_ids=torch.tensor([example.input_ids])).logits, -1)
            for t in range(1, len(example.labels)):
                if example.labels[t] != IGNORE:
                    nll -= float(logp[0, t - 1, example.labels[t]])
                    count += 1
    model.train()
    result = evaluate(model, examples, batch_size=3)
    assert result.tokens == count == sum(e.label_count for e in examples)
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert model.training  # the mode it was in


def test_nothing_to_evaluate(model: Any) -> None:
    with pytest.raises(ValueError, match="no label tokens"):
        perplexity(model, [TokenizedExample([1, 2], [IGNORE, IGNORE], 1)])
