"""Checkpoints of a training run: what it takes to go on from a step as if never stopped.

A checkpoint is a folder ``checkpoint-<step>`` under the run's directory holding

- ``trainable.safetensors``: the parameters that train, by name (the LoRA adapters, or the
  whole model in full fine-tuning);
- ``optimizer.safetensors``: the optimizer's per-parameter state (AdamW's moments and step
  counts) and torch's RNG state (LoRA dropout draws from it);
- ``state.json``: the step, the epoch, the optimizer's settings, the run's fingerprint (a
  resume into a different run is refused) and the metrics at that step.

Only safetensors and JSON: nothing is unpickled on load. A checkpoint is written into a
temporary folder and renamed into place, so one that exists is whole; older ones beyond the
newest ``keep`` are deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PREFIX: Final = "checkpoint-"
WEIGHTS: Final = "trainable.safetensors"
OPTIMIZER: Final = "optimizer.safetensors"
STATE: Final = "state.json"
RNG_KEY: Final = "rng.torch"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


class CheckpointMismatch(ValueError):
    """A checkpoint from a different run (other data, hyperparameters or trainable weights)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    path: Path
    step: int
    epoch: int  # epochs completed
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Restored:
    step: int
    epoch: int
    metrics: dict[str, float]


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that require gradients, by name (tied ones once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def checkpoints(directory: Path) -> list[Checkpoint]:
    """The run's whole checkpoints, oldest first."""
    found: list[Checkpoint] = []
    if not directory.is_dir():
        return found
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match is None or not (path / STATE).is_file():
            continue
        state = json.loads((path / STATE).read_text())
        found.append(Checkpoint(path, int(match[1]), int(state["epoch"]), state["metrics"]))
    return sorted(found, key=lambda c: c.step)


def latest(directory: Path) -> Checkpoint | None:
    found = checkpoints(directory)
    return found[-1] if found else None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"{index}.{key}"] = value.detach().contiguous()
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}
        for group in state["param_groups"]
    ]
    return tensors, groups


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    epoch: int,
    fingerprint: dict[str, Any],
    metrics: dict[str, float],
    keep: int,
) -> Checkpoint:
    """Write the checkpoint of ``step`` and delete all but the newest ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{step:08d}"
    tmp = directory / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {n: p.detach().contiguous() for n, p in trainable_parameters(model).items()}
    save_file(weights, str(tmp / WEIGHTS))
    tensors, groups = _optimizer_tensors(optimizer)
    tensors[RNG_KEY] = torch.get_rng_state()
    save_file(tensors, str(tmp / OPTIMIZER))
    state = {
        "step": step,
        "epoch": epoch,
        "fingerprint": fingerprint,
        "param_groups": groups,
        "metrics": metrics,
    }
    (tmp / STATE).write_text(json.dumps(state, indent=1))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(directory)
    prune(directory, keep)
    return Checkpoint(final, step, epoch, metrics)


def prune(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (and any half-written one)."""
    for stale in directory.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    found = checkpoints(directory)
    for old in found[: max(0, len(found) - max(1, keep))]:
        shutil.rmtree(old.path, ignore_errors=True)


def _load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[Any]
) -> None:
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key == RNG_KEY:
            continue
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    restored = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in groups
    ]
    optimizer.load_state_dict({"state": per_param, "param_groups": restored})


def load(
    checkpoint: Checkpoint,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    fingerprint: dict[str, Any],
) -> Restored:
    """Put the checkpoint's weights, optimizer state and RNG state back; raises
    :class:`CheckpointMismatch` when it belongs to another run."""
    state = json.loads((checkpoint.path / STATE).read_text())
    if state["fingerprint"] != fingerprint:
        changed = sorted(
            k
            for k in fingerprint.keys() | state["fingerprint"].keys()
            if fingerprint.get(k) != state["fingerprint"].get(k)
        )
        raise CheckpointMismatch(
            f"checkpoint {checkpoint.path.name} is from a different run ({', '.join(changed)})"
        )
    weights = load_file(str(checkpoint.path / WEIGHTS))
    params = trainable_parameters(model)
    if set(weights) != set(params):
        raise CheckpointMismatch(f"checkpoint {checkpoint.path.name} holds other weights")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])
    tensors = load_file(str(checkpoint.path / OPTIMIZER))
    _load_optimizer(optimizer, tensors, state["param_groups"])
    torch.set_rng_state(tensors[RNG_KEY])
    return Restored(int(state["step"]), int(state["epoch"]), dict(state["metrics"]))
