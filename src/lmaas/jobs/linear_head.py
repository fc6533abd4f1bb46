"""A linear classifier on top of an embedding model: trained in numpy, saved as safetensors.

The head is multinomial logistic regression, ``softmax(W @ embedding + b)``, fitted by full-batch
gradient descent with momentum and L2 regularisation on the embeddings of the labelled
examples. For a few hundred examples of a 384-dimension model that is well under a second.

Its files (``lmaas_head.json`` + ``head.safetensors``) sit beside the embedding model's own
files in one Hugging Face folder; the transformers backend sees the head file and answers
classify requests with it. No pickle anywhere: weights are safetensors, the config is JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import save_file

HEAD_FILE = "lmaas_head.json"
HEAD_WEIGHTS = "head.safetensors"

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class LinearHead:
    labels: list[str]
    weight: Matrix  # labels x dim
    bias: Matrix  # labels
    train_accuracy: float

    def probs(self, x: Matrix) -> Matrix:
        return _softmax(x @ self.weight.T + self.bias)

    def save(self, folder: Path, *, base_model: str) -> None:
        """Write the head's two files into ``folder``."""
        save_file(
            {"weight": np.ascontiguousarray(self.weight), "bias": np.ascontiguousarray(self.bias)},
            str(folder / HEAD_WEIGHTS),
        )
        config: dict[str, Any] = {
            "format": "lmaas-linear-head",
            "labels": self.labels,
            "base_model": base_model,
            "dim": int(self.weight.shape[1]),
            "train_accuracy": self.train_accuracy,
        }
        (folder / HEAD_FILE).write_text(json.dumps(config, indent=2))


def _softmax(z: Matrix) -> Matrix:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: Matrix = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def fit_linear_head(
    x: Matrix,
    labels: list[str],
    *,
    l2: float = 1e-3,
    steps: int = 500,
    learning_rate: float = 2.0,
) -> LinearHead:
    """Fit ``softmax(W x + b)`` to ``(x[i], labels[i])``; label order is sorted by name.

    Inputs are centred and scaled inside the fit (folded back into W and b), so the step
    size suits unit-length embeddings and raw ones alike.
    """
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError("at least two different labels are needed")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[label] for label in labels])
    n, dim = x.shape
    onehot = np.zeros((n, len(classes)), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0
    mean = x.mean(axis=0)
    scale = float(x.std()) or 1.0
    xs = ((x - mean) / scale).astype(np.float32)
    w = np.zeros((len(classes), dim), dtype=np.float32)
    b = np.zeros(len(classes), dtype=np.float32)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(steps):
        p = _softmax(xs @ w.T + b)
        grad = (p - onehot) / n
        gw = grad.T @ xs + l2 * w
        gb = grad.sum(axis=0)
        vw = 0.9 * vw - learning_rate * gw
        vb = 0.9 * vb - learning_rate * gb
        w += vw
        b += vb
    weight = (w / scale).astype(np.float32)
    bias = (b - weight @ mean).astype(np.float32)
    head = LinearHead(classes, weight, bias, 0.0)
    accuracy = float((head.probs(x).argmax(axis=1) == y).mean())
    return LinearHead(classes, weight, bias, accuracy)
