"""The training loop: AdamW over a model's trainable parameters, on the CPU, step by step.

One call of :func:`train` runs (or goes on with) one training run:

- batches: each epoch's shuffle depends only on the seed and the epoch, and examples of
  similar length share a batch (padded to its longest); a resumed run draws the same batches;
- the rate: a linear warmup, then a linear decay (``hyperparameters.learning_rate``);
  gradients are clipped to ``max_grad_norm``;
- the loss: cross-entropy on the label tokens, or with a teacher ``losses.distillation_loss``;
- metrics: after every step an event (:class:`StepMetrics`) with the step's loss, the rate,
  tokens per second, and the validation loss when it was measured (at each epoch's end, and
  every ``eval_every`` steps);
- checkpoints (:mod:`lmaas.training.checkpoints`) at each epoch's end, every
  ``checkpoint_every`` steps, and when ``should_stop()`` (asked before every step) says so;
  a run whose directory holds a checkpoint goes on from it, at the same step, to the same
  weights as a run never stopped;
- a loss or gradient that is not a finite number raises :class:`TrainingDiverged`.

torch's intra-op threads are set to ``threads`` for the call (process-wide), so a model server
on the same cores keeps answering.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lmaas.training import checkpoints
from lmaas.training.checkpoints import Checkpoint, trainable_parameters
from lmaas.training.data import TokenizedExample, collate, epoch_batches, steps_per_epoch
from lmaas.training.evaluation import evaluate
from lmaas.training.hyperparameters import Hyperparameters, learning_rate
from lmaas.training.losses import causal_lm_loss, distillation_loss, token_accuracy

Status = Literal["succeeded", "cancelled"]


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient) stopped being a finite number."""

    def __init__(self, step: int, what: str, value: float) -> None:
        self.step = step
        super().__init__(
            f"training diverged at step {step}: the {what} is {value} (not a finite number); "
            "a lower learning_rate_multiplier may help"
        )


@dataclass(frozen=True, slots=True)
class Distillation:
    """Train toward a teacher's soft labels; the teacher is only read."""

    teacher: nn.Module
    alpha: float = 0.5
    temperature: float = 2.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    checkpoint_dir: Path
    checkpoint_every: int | None = None  # steps, besides each epoch's end
    keep_checkpoints: int = 2
    eval_every: int | None = None  # steps, besides each epoch's end (with a validation set)
    threads: int = 1  # torch intra-op threads during the run
    pad_id: int = 0


@dataclass(frozen=True, slots=True)
class StepMetrics:
    step: int  # updates done, from 1
    total_steps: int
    epoch: int  # the epoch this step belongs to, from 1
    train_loss: float  # this step's batch loss (the distillation loss with a teacher)
    train_mean_token_accuracy: float
    valid_loss: float | None  # cross-entropy over the validation set, when measured now
    valid_mean_token_accuracy: float | None
    learning_rate: float
    tokens_per_second: float  # input tokens (padding excluded) per second of training
    progress: float  # step / total_steps


@dataclass(frozen=True, slots=True)
class CheckpointSaved:
    checkpoint: Checkpoint


TrainingEvent = StepMetrics | CheckpointSaved


@dataclass(frozen=True, slots=True)
class TrainingResult:
    status: Status
    step: int
    total_steps: int
    checkpoint: Checkpoint | None  # the newest one
    metrics: dict[str, float]  # the latest train and validation metrics


def _never() -> bool:
    return False


def _ignore(_event: TrainingEvent) -> None:
    return None


class _Run:
    def __init__(
        self,
        model: nn.Module,
        train_set: Sequence[TokenizedExample],
        hp: Hyperparameters,
        options: RunOptions,
        valid_set: Sequence[TokenizedExample] | None,
        distillation: Distillation | None,
    ) -> None:
        if not train_set:
            raise ValueError("there are no training examples")
        self.model, self.examples, self.hp, self.options = model, list(train_set), hp, options
        self.valid = list(valid_set or [])
        self.distillation = distillation
        self.per_epoch = steps_per_epoch(len(self.examples), hp.batch_size)
        self.total = self.per_epoch * hp.n_epochs
        self.params = list(trainable_parameters(model).values())
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            self.params, lr=hp.learning_rate, weight_decay=hp.weight_decay
        )
        self.lengths = [len(e.input_ids) for e in self.examples]
        self.fingerprint = self._fingerprint()
        self.step = 0
        self.saved: Checkpoint | None = None
        self.metrics: dict[str, float] = {}
        self.tokens = 0
        self.seconds = 0.0
        self._epoch_batches: tuple[int, list[list[int]]] = (-1, [])

    def _fingerprint(self) -> dict[str, Any]:
        fingerprint = {
            "examples": len(self.examples),
            "tokens": sum(self.lengths),
            "labels": sum(e.label_count for e in self.examples),
            "hyperparameters": {
                k: getattr(self.hp, k) for k in Hyperparameters.__dataclass_fields__
            },
            "trainable": sorted(trainable_parameters(self.model)),
            "distillation": None
            if self.distillation is None
            else [self.distillation.alpha, self.distillation.temperature],
        }
        loaded: dict[str, Any] = json.loads(json.dumps(fingerprint))
        return loaded

    def start(self) -> None:
        """Go on from the newest checkpoint, or seed a fresh run."""
        found = checkpoints.latest(self.options.checkpoint_dir)
        if found is None:
            torch.manual_seed(self.hp.seed)
            return
        restored = checkpoints.load(
            found, model=self.model, optimizer=self.optimizer, fingerprint=self.fingerprint
        )
        self.step, self.metrics, self.saved = restored.step, restored.metrics, found

    def batch(self) -> dict[str, torch.Tensor]:
        epoch, index = divmod(self.step, self.per_epoch)
        if self._epoch_batches[0] != epoch:
            order = epoch_batches(self.lengths, self.hp.batch_size, seed=self.hp.seed, epoch=epoch)
            self._epoch_batches = (epoch, order)
        chosen = self._epoch_batches[1][index]
        return collate([self.examples[i] for i in chosen], self.options.pad_id)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logits = self.model(**inputs).logits
        if self.distillation is None:
            return causal_lm_loss(logits, batch["labels"]), logits
        with torch.no_grad():
            teacher_logits = self.distillation.teacher(**inputs).logits
        loss = distillation_loss(
            logits,
            teacher_logits,
            batch["labels"],
            alpha=self.distillation.alpha,
            temperature=self.distillation.temperature,
        )
        return loss, logits

    def train_step(self, batch: dict[str, torch.Tensor]) -> None:
        started = time.perf_counter()
        rate = learning_rate(self.hp.learning_rate, self.step, self.total, self.hp.warmup_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        loss, logits = self._loss(batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDiverged(self.step + 1, "loss", value)
        loss.backward()  # type: ignore[no-untyped-call]
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.hp.max_grad_norm))
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(self.step + 1, "gradient norm", norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += int(batch["attention_mask"].sum())
        self.seconds += time.perf_counter() - started
        self.metrics["train_loss"] = value
        self.metrics["train_mean_token_accuracy"] = token_accuracy(logits.detach(), batch["labels"])
        self.metrics["learning_rate"] = rate

    def evaluate_if_due(self, epoch_end: bool) -> bool:
        every = self.options.eval_every
        if not self.valid or not (epoch_end or (every and self.step % every == 0)):
            return False
        result = evaluate(
            self.model, self.valid, pad_id=self.options.pad_id, batch_size=self.hp.batch_size
        )
        self.metrics["valid_loss"] = result.loss
        self.metrics["valid_mean_token_accuracy"] = result.token_accuracy
        return True

    def step_metrics(self, evaluated: bool) -> StepMetrics:
        m = self.metrics
        return StepMetrics(
            step=self.step,
            total_steps=self.total,
            epoch=(self.step - 1) // self.per_epoch + 1,
            train_loss=m["train_loss"],
            train_mean_token_accuracy=m["train_mean_token_accuracy"],
            valid_loss=m["valid_loss"] if evaluated else None,
            valid_mean_token_accuracy=m["valid_mean_token_accuracy"] if evaluated else None,
            learning_rate=m["learning_rate"],
            tokens_per_second=self.tokens / self.seconds if self.seconds > 0 else 0.0,
            progress=self.step / self.total,
        )

    def checkpoint(self) -> Checkpoint:
        self.saved = checkpoints.save(
            self.options.checkpoint_dir,
            model=self.model,
            optimizer=self.optimizer,
            step=self.step,
            epoch=self.step // self.per_epoch,
            fingerprint=self.fingerprint,
            metrics=dict(self.metrics),
            keep=self.options.keep_checkpoints,
        )
        return self.saved

    def checkpoint_due(self, epoch_end: bool) -> bool:
        every = self.options.checkpoint_every
        return epoch_end or bool(every and self.step % every == 0)

    def result(self, status: Status) -> TrainingResult:
        return TrainingResult(status, self.step, self.total, self.saved, dict(self.metrics))


def train(
    model: nn.Module,
    train_set: Sequence[TokenizedExample],
    hyperparameters: Hyperparameters,
    options: RunOptions,
    *,
    valid_set: Sequence[TokenizedExample] | None = None,
    distillation: Distillation | None = None,
    on_event: Callable[[TrainingEvent], None] = _ignore,
    should_stop: Callable[[], bool] = _never,
) -> TrainingResult:
    """Train ``model`` in place (its parameters that require gradients) and return how the
    run ended. ``should_stop`` is asked before each step; when it answers True the run
    saves a checkpoint of where it is and returns ``cancelled``. A run started again over the
    same ``options.checkpoint_dir`` goes on from the newest checkpoint there (raising
    ``checkpoints.CheckpointMismatch`` if that is another run's)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, options.threads))
    try:
        return _drive(
            _Run(model, train_set, hyperparameters, options, valid_set, distillation),
            on_event,
            should_stop,
        )
    finally:
        torch.set_num_threads(previous)


def _drive(
    run: _Run, on_event: Callable[[TrainingEvent], None], should_stop: Callable[[], bool]
) -> TrainingResult:
    run.start()
    run.model.train()
    if run.distillation is not None:
        run.distillation.teacher.eval()
    while run.step < run.total:
        if should_stop():
            if run.step > 0 and (run.saved is None or run.saved.step != run.step):
                on_event(CheckpointSaved(run.checkpoint()))
            return run.result("cancelled")
        run.train_step(run.batch())
        epoch_end = run.step % run.per_epoch == 0
        evaluated = run.evaluate_if_due(epoch_end)
        on_event(run.step_metrics(evaluated))
        if run.checkpoint_due(epoch_end):
            on_event(CheckpointSaved(run.checkpoint()))
    return run.result("succeeded")
