"""Held-out loss and perplexity of a causal language model over tokenized examples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmaas.training.data import IGNORE, TokenizedExample, collate

EVAL_BATCH: int = 8


@dataclass(frozen=True, slots=True)
class Evaluation:
    loss: float  # mean negative log-likelihood per label token (nats)
    token_accuracy: float  # share of label tokens that are the most likely next token
    tokens: int  # label tokens counted

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def evaluate(
    model: nn.Module,
    examples: Sequence[TokenizedExample],
    *,
    pad_id: int = 0,
    batch_size: int = EVAL_BATCH,
) -> Evaluation:
    """The model's loss over every label token of ``examples`` (each token weighs the same,
    however its example is long). The model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    nll, correct, count = 0.0, 0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                batch = collate(examples[start : start + batch_size], pad_id)
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits[:, :-1, :]
                targets = batch["labels"][:, 1:]
                keep = targets != IGNORE
                kept = logits[keep].float()
                nll += float(F.cross_entropy(kept, targets[keep], reduction="sum"))
                correct += int((kept.argmax(dim=-1) == targets[keep]).sum())
                count += int(keep.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the examples hold no label tokens to evaluate")
    return Evaluation(loss=nll / count, token_accuracy=correct / count, tokens=count)


def perplexity(
    model: nn.Module,
    examples: Sequence[TokenizedExample],
    *,
    pad_id: int = 0,
    batch_size: int = EVAL_BATCH,
) -> float:
    """``exp(mean NLL over the label tokens)`` of ``model`` on ``examples``."""
    return evaluate(model, examples, pad_id=pad_id, batch_size=batch_size).perplexity
