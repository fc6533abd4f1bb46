"""The losses against the formulas, on logits small enough to write down."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lmaas.training.data import IGNORE
from lmaas.training.losses import causal_lm_loss, distillation_loss, token_accuracy


def _softmax(z: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _by_hand(
    student: list[list[float]],
    teacher: list[list[float]],
    targets: list[int],
    alpha: float,
    t: float,
) -> float:
    """alpha * T^2 * mean KL(p_teacher || p_student) + (1 - alpha) * mean CE, per position."""
    kl = ce = 0.0
    for s, te, y in zip(student, teacher, targets, strict=True):
        ps, pt = _softmax(s, t), _softmax(te, t)
        kl += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps, strict=True))
        ce += -math.log(_softmax(s, 1.0)[y])
    n = len(targets)
    return alpha * t * t * kl / n + (1 - alpha) * ce / n


def test_a_closed_form_case() -> None:
    # One counted position: the student is uniform over two tokens, the teacher gives 2:1.
    student = torch.tensor([[[0.0, 0.0], [9.0, 9.0]]])
    teacher = torch.tensor([[[math.log(2.0), 0.0], [1.0, -1.0]]])
    labels = torch.tensor([[IGNORE, 0]])
    kl = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert distillation_loss(student, teacher, labels, 1.0, 1.0).item() == pytest.approx(kl)
    assert distillation_loss(student, teacher, labels, 0.0, 1.0).item() == pytest.approx(
        math.log(2)
    )
    mixed = distillation_loss(student, teacher, labels, 0.25, 1.0).item()
    assert mixed == pytest.approx(0.25 * kl + 0.75 * math.log(2))


def test_the_formula_on_hand_made_logits_with_masking_and_temperature() -> None:
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0], [0.3, 0.1, -0.2]]
    teacher = [[2.0, 0.5, 0.0], [1.0, 1.0, 1.5], [0.0, 4.0, 1.0], [5.0, 5.0, 5.0]]
    labels = torch.tensor([[IGNORE, 2, IGNORE, 1]])  # logits at positions 0 and 2 count
    for alpha, t in [(0.5, 2.0), (0.9, 4.0), (0.3, 0.5)]:
        got = distillation_loss(torch.tensor([student]), torch.tensor([teacher]), labels, alpha, t)
        want = _by_hand([student[0], student[2]], [teacher[0], teacher[2]], [2, 1], alpha, t)
        assert got.item() == pytest.approx(want, rel=1e-5)


def test_the_kl_runs_from_the_teacher_to_the_student() -> None:
    s = [[0.0, 3.0, 0.0]]
    te = [[2.0, 0.0, 1.0]]
    labels = torch.tensor([[IGNORE, 0]])
    pad = [[0.0, 0.0, 0.0]]
    got = distillation_loss(torch.tensor([s + pad]), torch.tensor([te + pad]), labels, 1.0, 1.0)
    forward = _by_hand(s, te, [0], 1.0, 1.0)
    reverse = _by_hand(te, s, [0], 1.0, 1.0)
    assert got.item() == pytest.approx(forward)
    assert forward != pytest.approx(reverse)


def test_the_teacher_gets_no_gradient_and_the_student_does() -> None:
    student = torch.randn(2, 5, 7, requires_grad=True)
    teacher = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5))
    distillation_loss(student, teacher, labels, 0.5, 2.0).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_bad_arguments() -> None:
    x = torch.zeros(1, 3, 4)
    labels = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(x, x, labels, 1.5, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(x, x, labels, 0.5, 0.0)
    with pytest.raises(ValueError, match="same tokenizer"):
        distillation_loss(x, torch.zeros(1, 3, 5), labels, 0.5, 1.0)


def test_cross_entropy_matches_the_models_own_loss(tokenizer: Any, model: Any) -> None:
    ids = torch.tensor([tokenizer("the quick brown fox jumps")["input_ids"]])
    labels = ids.clone()
    labels[0, :2] = IGNORE
    out = model(input_ids=ids, labels=labels)
    assert causal_lm_loss(out.logits, labels).item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_nothing_to_learn_is_zero_not_nan() -> None:
    x = torch.randn(1, 3, 4, requires_grad=True)
    labels = torch.full((1, 3), IGNORE)
    assert causal_lm_loss(x, labels).item() == 0.0
    assert distillation_loss(x, x.detach(), labels, 0.5, 2.0).item() == 0.0
    assert token_accuracy(x, labels) == 0.0


def test_token_accuracy_counts_the_argmax_hits() -> None:
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE, 1, 1]])  # position 0 predicts 1 (hit), 1 predicts 0 (miss)
    assert token_accuracy(logits, labels) == 0.5
