"""A run's hyperparameters: what the user asked, ``auto`` resolved from the data's size.

The learning rate is a base rate per method times ``learning_rate_multiplier`` (OpenAI's
knob). The base rates are usual ones for the method on small models: LoRA adapters start at
zero and take a larger rate than full fine-tuning, which moves pretrained weights; a
distilled student is trained whole, from a teacher's half, and sits between the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

Method = Literal["full", "lora", "distillation"]
Auto = Literal["auto"]
AUTO: Final = "auto"
DEFAULT_METHOD: Final[Method] = "lora"  # on a CPU: a small fraction of the weights to train

BASE_LEARNING_RATE: Final[dict[Method, float]] = {
    "full": 5e-5,
    "lora": 3e-4,
    "distillation": 1e-4,
}
DEFAULT_EPOCHS: Final = 3
# auto n_epochs aims at this many examples seen in all (OpenAI's legacy rule): few examples
# get more epochs, many get fewer.
MIN_TARGET_EXAMPLES: Final = 100
MAX_TARGET_EXAMPLES: Final = 25_000
MAX_AUTO_EPOCHS: Final = 25
MAX_EPOCHS: Final = 50
MAX_BATCH_SIZE: Final = 256
MAX_AUTO_BATCH_SIZE: Final = 8  # on two CPU cores a larger batch only adds latency per step
MAX_MULTIPLIER: Final = 100.0


class HyperparameterError(ValueError):
    """A hyperparameter out of range; ``param`` names it as the API does."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(f"{param}: {message}")


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate: float  # the peak rate: base rate x multiplier
    seed: int = 0
    warmup_fraction: float = 0.05  # of the steps, rising linearly; then linear decay
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0


def auto_epochs(n_examples: int) -> int:
    if n_examples * DEFAULT_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / max(1, n_examples)))
    if n_examples * DEFAULT_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_examples)
    return DEFAULT_EPOCHS


def auto_batch_size(n_examples: int) -> int:
    """1 under 64 examples, then doubling every doubling of the data, at most 8."""
    size = 1
    while size < MAX_AUTO_BATCH_SIZE and n_examples >= 64 * size:
        size *= 2
    return size


def _check_int(param: str, value: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise HyperparameterError(param, f"must be an integer from 1 to {high} or 'auto'")
    return value


def resolve(
    n_examples: int,
    method: Method,
    *,
    n_epochs: int | Auto = AUTO,
    batch_size: int | Auto = AUTO,
    learning_rate_multiplier: float | Auto = AUTO,
    seed: int = 0,
) -> Hyperparameters:
    """The run's hyperparameters for ``n_examples`` training examples; raises
    :class:`HyperparameterError` naming a value out of range."""
    if method not in BASE_LEARNING_RATE:
        raise HyperparameterError("method", f"must be one of {', '.join(BASE_LEARNING_RATE)}")
    epochs = (
        auto_epochs(n_examples)
        if n_epochs == AUTO
        else _check_int("n_epochs", n_epochs, MAX_EPOCHS)
    )
    batch = (
        auto_batch_size(n_examples)
        if batch_size == AUTO
        else _check_int("batch_size", batch_size, MAX_BATCH_SIZE)
    )
    multiplier = 1.0 if learning_rate_multiplier == AUTO else learning_rate_multiplier
    if (
        isinstance(multiplier, bool)
        or not isinstance(multiplier, int | float)
        or not 0 < multiplier <= MAX_MULTIPLIER
    ):
        raise HyperparameterError(
            "learning_rate_multiplier", f"must be above 0 and at most {MAX_MULTIPLIER:g}, or 'auto'"
        )
    return Hyperparameters(
        n_epochs=epochs,
        batch_size=min(batch, max(1, n_examples)),
        learning_rate=BASE_LEARNING_RATE[method] * float(multiplier),
        seed=seed,
    )


def learning_rate(peak: float, step: int, total_steps: int, warmup_fraction: float) -> float:
    """The rate for update ``step`` (0-based): a linear rise over the warmup steps, then a
    linear decay that reaches zero just after the last update."""
    warmup = math.ceil(warmup_fraction * total_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup))
