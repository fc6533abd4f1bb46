"""The training loop: learning, metrics, checkpoints, cancel and resume, divergence."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from lmaas.training import checkpoints
from lmaas.training.checkpoints import CheckpointMismatch
from lmaas.training.data import collate, tokenize_examples
from lmaas.training.evaluation import evaluate
from lmaas.training.formats import read_examples
from lmaas.training.hyperparameters import Hyperparameters
from lmaas.training.loop import (
    CheckpointSaved,
    Distillation,
    RunOptions,
    StepMetrics,
    TrainingDiverged,
    TrainingEvent,
    train,
)
from lmaas.training.lora import LoraSettings, add_lora
from tests.unit.training.conftest import CORPUS, fact_examples, jsonl, tiny_llama

HP = Hyperparameters(n_epochs=3, batch_size=4, learning_rate=1e-2, seed=7)


def test_the_loss_falls_on_a_memorizable_set(tokenizer: Any, model: Any, tmp_path: Path) -> None:
    examples = fact_examples(tokenizer)
    before = evaluate(model, examples).loss
    hp = Hyperparameters(n_epochs=20, batch_size=4, learning_rate=3e-2, seed=0)
    result = train(model, examples, hp, RunOptions(tmp_path))
    after = evaluate(model, examples).loss
    assert result.status == "succeeded" and result.step == result.total_steps == 40
    assert after < 0.2 * before
    assert after < 0.5


def test_events_checkpoints_and_pruning(tokenizer: Any, model: Any, tmp_path: Path) -> None:
    examples = fact_examples(tokenizer)  # 8 examples: 2 steps an epoch
    events: list[TrainingEvent] = []
    threads: list[int] = []

    def on_event(event: TrainingEvent) -> None:
        events.append(event)
        threads.append(torch.get_num_threads())

    outer = torch.get_num_threads()
    options = RunOptions(tmp_path, checkpoint_every=1, keep_checkpoints=2, eval_every=3)
    result = train(model, examples, HP, options, valid_set=examples[:3], on_event=on_event)
    metrics = [e for e in events if isinstance(e, StepMetrics)]
    assert [m.step for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert [m.epoch for m in metrics] == [1, 1, 2, 2, 3, 3]
    assert [m.progress for m in metrics] == pytest.approx([k / 6 for k in range(1, 7)])
    # Validation at each epoch's end (2, 4, 6) and every third step (3, 6).
    assert [m.step for m in metrics if m.valid_loss is not None] == [2, 3, 4, 6]
    assert all(m.tokens_per_second > 0 and math.isfinite(m.train_loss) for m in metrics)
    # Warmup of one step, then a linear decay to the last step.
    assert [m.learning_rate for m in metrics] == pytest.approx(
        [1e-2, 1e-2, 0.8e-2, 0.6e-2, 0.4e-2, 0.2e-2]
    )
    saved = [e.checkpoint.step for e in events if isinstance(e, CheckpointSaved)]
    assert saved == [1, 2, 3, 4, 5, 6]
    assert [c.step for c in checkpoints.checkpoints(tmp_path)] == [5, 6]
    assert result.checkpoint is not None and result.checkpoint.step == 6
    assert result.checkpoint.epoch == 3
    assert result.checkpoint.metrics["valid_loss"] == metrics[-1].valid_loss
    assert set(threads) == {1} and torch.get_num_threads() == outer


def _lora_model(tokenizer: Any) -> Any:
    return add_lora(tiny_llama(len(tokenizer)), LoraSettings(rank=4, dropout=0.2), seed=1)


def _stop_at(step: int, events: list[TrainingEvent]) -> Any:
    def should_stop() -> bool:
        return any(isinstance(e, StepMetrics) and e.step >= step for e in events)

    return should_stop


@pytest.mark.parametrize("method", ["lora", "full"])
def test_cancel_then_resume_ends_where_an_uninterrupted_run_does(
    tokenizer: Any, tmp_path: Path, method: str
) -> None:
    def fresh() -> Any:
        return _lora_model(tokenizer) if method == "lora" else tiny_llama(len(tokenizer))

    examples = fact_examples(tokenizer)
    straight = fresh()
    train(straight, examples, HP, RunOptions(tmp_path / "straight"))

    events: list[TrainingEvent] = []
    first = fresh()
    options = RunOptions(tmp_path / "stopped")
    cancelled = train(
        first, examples, HP, options, on_event=events.append, should_stop=_stop_at(3, events)
    )
    assert cancelled.status == "cancelled" and cancelled.step == 3
    assert checkpoints.latest(options.checkpoint_dir).step == 3  # type: ignore[union-attr]
    assert isinstance(events[-1], CheckpointSaved) and events[-1].checkpoint.step == 3

    resumed_events: list[TrainingEvent] = []
    second = fresh()  # a new process would start from the base again
    done = train(second, examples, HP, options, on_event=resumed_events.append)
    assert done.status == "succeeded" and done.step == 6
    steps = [e.step for e in resumed_events if isinstance(e, StepMetrics)]
    assert steps == [4, 5, 6]
    for (name, want), (_, got) in zip(
        straight.named_parameters(), second.named_parameters(), strict=True
    ):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=name)


def test_a_stop_before_any_step_saves_nothing(tokenizer: Any, model: Any, tmp_path: Path) -> None:
    result = train(
        model, fact_examples(tokenizer), HP, RunOptions(tmp_path), should_stop=lambda: True
    )
    assert result.status == "cancelled" and result.step == 0 and result.checkpoint is None
    assert checkpoints.latest(tmp_path) is None


def test_a_checkpoint_of_another_run_is_refused(tokenizer: Any, tmp_path: Path) -> None:
    examples = fact_examples(tokenizer)
    events: list[TrainingEvent] = []
    train(
        tiny_llama(len(tokenizer)),
        examples,
        HP,
        RunOptions(tmp_path),
        on_event=events.append,
        should_stop=_stop_at(1, events),
    )
    other = Hyperparameters(n_epochs=3, batch_size=2, learning_rate=1e-2, seed=7)
    with pytest.raises(CheckpointMismatch, match=r"different run .*hyperparameters"):
        train(tiny_llama(len(tokenizer)), examples, other, RunOptions(tmp_path))


def test_a_nan_loss_raises(tokenizer: Any, model: Any, tmp_path: Path) -> None:
    with torch.no_grad():
        model.lm_head.weight[3, 0] = float("nan")
    events: list[TrainingEvent] = []
    with pytest.raises(TrainingDiverged, match="diverged at step 1: the loss is nan") as caught:
        train(model, fact_examples(tokenizer), HP, RunOptions(tmp_path), on_event=events.append)
    assert caught.value.step == 1
    assert events == [] and checkpoints.latest(tmp_path) is None


def test_distillation_pulls_the_student_toward_the_teacher(tokenizer: Any, tmp_path: Path) -> None:
    rows = [{"text": text} for text in CORPUS[:4]]
    examples = tokenize_examples(read_examples(jsonl(rows)), tokenizer, 64).examples
    teacher = tiny_llama(len(tokenizer), layers=4)
    train(teacher, examples, Hyperparameters(10, 4, 1e-2, seed=0), RunOptions(tmp_path / "t"))
    teacher_weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = tiny_llama(len(tokenizer), layers=2, seed=9)
    batch = collate(examples, 0)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def gap() -> float:
        """KL(teacher || student) per real token."""
        with torch.no_grad():
            s = torch.log_softmax(student.eval()(**inputs).logits, -1)
            t = torch.log_softmax(teacher.eval()(**inputs).logits, -1)
        return float((t.exp() * (t - s)).sum(-1)[batch["attention_mask"].bool()].mean())

    before = gap()
    distill = Distillation(teacher, alpha=1.0, temperature=1.0)
    train(
        student,
        examples,
        Hyperparameters(5, 4, 1e-2),
        RunOptions(tmp_path / "s"),
        distillation=distill,
    )
    assert gap() < 0.25 * before
    assert all(torch.equal(v, teacher_weights[k]) for k, v in teacher.state_dict().items())


def test_no_examples_or_nothing_to_train(tokenizer: Any, model: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no training examples"):
        train(model, [], HP, RunOptions(tmp_path))
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model, fact_examples(tokenizer), HP, RunOptions(tmp_path))
