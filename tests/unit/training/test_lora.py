"""LoRA: only the adapters train, and merging them gives the same model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from lmaas.training.hyperparameters import Hyperparameters
from lmaas.training.loop import RunOptions, train
from lmaas.training.lora import LLAMA_TARGETS, LoraSettings, add_lora, merge_lora
from tests.unit.training.conftest import fact_examples, tiny_llama


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=ids).logits
    return out


def _trained_lora(tokenizer: Any, tmp_path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    base = tiny_llama(len(tokenizer))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = add_lora(base, LoraSettings(rank=4, alpha=8, dropout=0.1), seed=3)
    hp = Hyperparameters(n_epochs=2, batch_size=4, learning_rate=1e-2, seed=1)
    train(model, fact_examples(tokenizer), hp, RunOptions(tmp_path / "ckpt", pad_id=0))
    return model, before


def test_only_the_adapters_train(tokenizer: Any, tmp_path: Path) -> None:
    model, before = _trained_lora(tokenizer, tmp_path)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.split(".")[-4] for n in trainable}
    assert adapted == set(LLAMA_TARGETS)
    base = model.get_base_model()
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        original = name.replace(".base_layer", "")
        assert torch.equal(tensor, before[original]), name
    # The adapters did move (lora_B starts at zero).
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_the_merged_model_equals_base_plus_adapter(tokenizer: Any, tmp_path: Path) -> None:
    model, _ = _trained_lora(tokenizer, tmp_path)
    ids = torch.tensor([tokenizer("the capital of france is paris")["input_ids"]])
    adapted = _logits(model, ids)
    model.save_pretrained(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    merged = merge_lora(model)
    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, ids), adapted, atol=1e-5, rtol=1e-5)
    # The adapter saved apart gives the same model over a fresh copy of the base.
    again = PeftModel.from_pretrained(tiny_llama(len(tokenizer)), str(tmp_path / "adapter"))
    torch.testing.assert_close(_logits(again, ids), adapted, atol=1e-5, rtol=1e-5)
    # ... and differs from the base alone.
    assert not torch.allclose(_logits(tiny_llama(len(tokenizer)), ids), adapted, atol=1e-3)


def test_the_same_seed_gives_the_same_adapters(tokenizer: Any) -> None:
    a = add_lora(tiny_llama(len(tokenizer)), LoraSettings(), seed=5)
    b = add_lora(tiny_llama(len(tokenizer)), LoraSettings(), seed=5)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)


def test_named_targets_and_bad_settings(tokenizer: Any) -> None:
    model = add_lora(tiny_llama(len(tokenizer)), LoraSettings(target_modules=("q_proj", "v_proj")))
    adapted = {n.split(".")[-4] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="no module named c_attn"):
        add_lora(tiny_llama(len(tokenizer)), LoraSettings(target_modules=("c_attn",)))
    with pytest.raises(ValueError, match="rank"):
        LoraSettings(rank=0)
    with pytest.raises(ValueError, match="dropout"):
        LoraSettings(dropout=1.0)
    with pytest.raises(TypeError, match="no LoRA adapter"):
        merge_lora(tiny_llama(len(tokenizer)))
