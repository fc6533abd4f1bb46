"""LoRA adapters (through peft): add them to a model, merge them into it.

With LoRA only the adapters' small matrices train; the base weights stay bit-identical. The
adapter is saved on its own (``export.save_adapter``: ``adapter_config.json`` +
``adapter_model.safetensors``, which peft can load over the same base) before it is merged
into the base weights (``merge_and_unload``) to give a plain model that any engine serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

# Llama-family projections (SmolLM2, Llama, Mistral, Qwen): attention and MLP, as QLoRA found
# adapting every linear layer of a block worth it.
LLAMA_TARGETS: Final = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALL_LINEAR: Final = "all-linear"  # peft: every linear layer but the output head


@dataclass(frozen=True, slots=True)
class LoraSettings:
    """A LoRA adapter's shape. ``target_modules`` None means :data:`LLAMA_TARGETS` where the
    model has such modules, else every linear layer."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= 256:
            raise ValueError("rank must be between 1 and 256")
        if not 0 < self.alpha <= 1024:
            raise ValueError("alpha must be above 0 and at most 1024")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be at least 0 and below 1")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("target_modules must name at least one module")


def _module_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}


def _targets(model: nn.Module, settings: LoraSettings) -> list[str] | str:
    names = _module_names(model)
    if settings.target_modules is None:
        llama: list[str] = [t for t in LLAMA_TARGETS if t in names]
        return llama or ALL_LINEAR
    missing = sorted(set(settings.target_modules) - names)
    if missing:
        raise ValueError(f"the model has no module named {', '.join(missing)} (target_modules)")
    return list(settings.target_modules)


def add_lora(model: nn.Module, settings: LoraSettings, *, seed: int = 0) -> Any:
    """``model`` wrapped with fresh LoRA adapters (a peft ``PeftModel``); only the adapters
    require gradients. Their initial values depend only on ``seed`` (torch's global RNG is
    left as it was)."""
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=_targets(model, settings),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def is_lora(model: nn.Module) -> bool:
    return isinstance(model, PeftModel)


def merge_lora(model: Any) -> Any:
    """The base model with the adapters added into its weights, unwrapped from peft. The
    peft model is used up: save the adapter first when it is wanted
    (``lmaas.training.export.save_adapter``)."""
    if not isinstance(model, PeftModel):
        raise TypeError("the model has no LoRA adapter")
    return model.merge_and_unload()
