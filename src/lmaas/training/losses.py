"""The training losses, as pure functions of logits and labels.

Both take the model's logits ``[batch, seq, vocab]`` and the labels ``[batch, seq]`` of
:mod:`lmaas.training.data` and do the causal shift themselves: the logits at position t are
scored against the label at t + 1. Positions whose label is ``IGNORE`` count for nothing, and
every loss is a mean over the positions that count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmaas.training.data import IGNORE


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the positions that count ``[n, vocab]`` and their targets ``[n]``."""
    logits = logits[:, :-1, :]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    return logits[keep], targets[keep]


def label_count(labels: torch.Tensor) -> int:
    """How many positions of a batch the losses count."""
    return int((labels[:, 1:] != IGNORE).sum())


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next token over the labelled positions."""
    kept, targets = _shift(logits, labels)
    if targets.numel() == 0:  # a mean over nothing is NaN, which would read as divergence
        return logits.sum() * 0.0
    return F.cross_entropy(kept.float(), targets, reduction="mean")


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of labelled positions where the most likely next token is the label."""
    kept, targets = _shift(logits, labels)
    if targets.numel() == 0:
        return 0.0
    return float((kept.argmax(dim=-1) == targets).float().mean())


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``alpha * T^2 * KL(p_teacher,T || p_student,T) + (1 - alpha) * CE(student, labels)``.

    ``p_x,T = softmax(logits_x / T)``. The KL term is the standard soft-label distillation of
    Hinton et al. (2015) and DistilBERT: the student is trained toward the teacher's softened
    distribution, ``KL = sum_v p_t(v) * (log p_t(v) - log p_s(v))`` per position, averaged over
    the labelled positions; ``T^2`` keeps its gradients on the scale of the cross-entropy's as
    ``T`` changes. The cross-entropy is :func:`causal_lm_loss` at temperature 1. The teacher's
    logits carry no gradient.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be between 0 and 1")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape (the same tokenizer is needed)"
        )
    student, targets = _shift(student_logits, labels)
    if targets.numel() == 0:
        return student_logits.sum() * 0.0
    teacher, _ = _shift(teacher_logits.detach(), labels)
    log_p_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    ce = F.cross_entropy(student.float(), targets, reduction="mean")
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce
