"""auto hyperparameters from the data's size, the ranges, and the rate schedule."""

from __future__ import annotations

import itertools

import pytest

from lmaas.training.hyperparameters import (
    BASE_LEARNING_RATE,
    HyperparameterError,
    learning_rate,
    resolve,
)


@pytest.mark.parametrize(
    ("n", "epochs", "batch"),
    [(10, 10, 1), (30, 4, 1), (64, 3, 2), (200, 3, 4), (300, 3, 8), (5_000, 3, 8), (20_000, 1, 8)],
)
def test_auto_follows_the_data_size(n: int, epochs: int, batch: int) -> None:
    hp = resolve(n, "lora")
    assert (hp.n_epochs, hp.batch_size) == (epochs, batch)
    assert hp.learning_rate == BASE_LEARNING_RATE["lora"]


def test_given_values_and_the_multiplier() -> None:
    hp = resolve(100, "full", n_epochs=2, batch_size=16, learning_rate_multiplier=2.0, seed=9)
    assert (hp.n_epochs, hp.batch_size, hp.seed) == (2, 16, 9)
    assert hp.learning_rate == pytest.approx(2 * BASE_LEARNING_RATE["full"])
    assert resolve(3, "full", batch_size=16).batch_size == 3  # never more than the examples


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n_epochs": 0}, "n_epochs"),
        ({"n_epochs": 51}, "n_epochs"),
        ({"n_epochs": True}, "n_epochs"),
        ({"batch_size": 1000}, "batch_size"),
        ({"learning_rate_multiplier": 0}, "learning_rate_multiplier"),
        ({"learning_rate_multiplier": -1.0}, "learning_rate_multiplier"),
    ],
)
def test_out_of_range_names_the_field(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(HyperparameterError) as caught:
        resolve(100, "lora", **kwargs)  # type: ignore[arg-type]
    assert caught.value.param == param
    assert str(caught.value).startswith(f"{param}: ")


def test_an_unknown_method() -> None:
    with pytest.raises(HyperparameterError) as caught:
        resolve(100, "dpo")  # type: ignore[arg-type]
    assert caught.value.param == "method"


def test_the_schedule_warms_up_then_decays_linearly() -> None:
    rates = [learning_rate(1.0, s, 40, 0.1) for s in range(40)]
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4] == pytest.approx(1.0)
    assert rates[-1] == pytest.approx(1 / 36) and rates[-1] > 0
    assert all(a >= b for a, b in itertools.pairwise(rates[3:]))
