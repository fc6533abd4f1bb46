"""A ChatML tokenizer trained in the test and tiny random Llama models over its vocabulary."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lmaas.training.data import TokenizedExample, tokenize_examples
from lmaas.training.formats import read_examples

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is the capital of france? paris is the capital of france.",
    "system user assistant hello there, how can I help you today?",
    "colors: red green blue yellow; numbers: one two three four five six seven",
] * 4
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE over a small corpus (a few hundred tokens) with a ChatML template."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def tiny_llama(vocab_size: int, *, seed: int = 0, layers: int = 2, **config: Any) -> Any:
    torch.manual_seed(seed)
    settings: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
        **config,
    }
    return LlamaForCausalLM(LlamaConfig(**settings))


@pytest.fixture
def model(tokenizer: PreTrainedTokenizerFast) -> Any:
    return tiny_llama(len(tokenizer))


FACTS = [
    ("the capital of france is", " paris"),
    ("the color of the sky is", " blue"),
    ("the fox is", " quick and brown"),
    ("one two three", " four five six"),
    ("hello there,", " how can I help you today?"),
    ("the dog is", " lazy"),
    ("red green", " blue yellow"),
    ("numbers:", " one two"),
]


def jsonl(rows: list[dict[str, Any]]) -> list[bytes]:
    import json

    return [json.dumps(row).encode() + b"\n" for row in rows]


def fact_examples(tokenizer: Any, max_seq_len: int = 64) -> list[TokenizedExample]:
    rows = [{"prompt": p, "completion": c} for p, c in FACTS]
    return tokenize_examples(read_examples(jsonl(rows)), tokenizer, max_seq_len).examples
