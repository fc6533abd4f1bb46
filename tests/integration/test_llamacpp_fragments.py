"""The worker's tokenizer with repeated stretches kept (``fragments``) gives exactly llama.cpp's
own ids on the shipped SmolLM2 vocabulary: chat prompts with long system prompts, special
tokens at every kind of place, text that only looks like markup, non-ASCII text, a BOS."""

from __future__ import annotations

import random

from lmaas.worker.backends.llamacpp.fragments import MIN_CHARS
from lmaas.worker.backends.llamacpp.generate import LlamaCppBackend

WORDS = ["the", " cat", "\n\n", "  ", "é", "日本", " <|im_start", "|>", "<", "im_end", "\t", "99"]


def chatml(system: str, turns: list[str]) -> str:
    out = f"<|im_start|>system\n{system}<|im_end|>\n"
    for i, turn in enumerate(turns):
        out += f"<|im_start|>{'user' if i % 2 == 0 else 'assistant'}\n{turn}<|im_end|>\n"
    return out + "<|im_start|>assistant\n"


def test_the_shipped_vocabulary_gets_the_kept_stretches(shipped_llama: LlamaCppBackend) -> None:
    tok = shipped_llama._fragments
    assert tok is not None
    assert tok.certain("<|im_start|>") and tok.certain("<|im_end|>")


def test_ids_equal_llama_cpp_own_on_many_prompts(shipped_llama: LlamaCppBackend) -> None:
    rng = random.Random(7)
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    systems = ["".join(rng.choice(WORDS) for _ in range(n)) for n in (80, 200, 700)]
    texts = []
    for system in systems:
        for k in range(4):
            turns = [
                "".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(k)
            ]
            texts.append(chatml(system, turns))
    for _ in range(40):  # special tokens anywhere, even inside words and back to back
        parts = [rng.choice(WORDS + specials) for _ in range(rng.randint(50, 400))]
        texts.append("".join(parts))
    assert sum(len(t) >= MIN_CHARS for t in texts) > 30
    for _ in range(2):  # the second time, the stretches come from what was kept
        for text in texts:
            for bos in (False, True):
                want = shipped_llama._tokenize(text, add_bos=bos, parse_special=True)
                assert shipped_llama.tokenize(text, add_bos=bos, parse_special=True) == want, text
