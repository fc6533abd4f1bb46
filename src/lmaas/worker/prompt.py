"""A generation prompt as tokens, and the special tokens a worker tells the gateway about.

A chat prompt is a rendered template: its markup holds special tokens (``<|im_start|>``) that
must be parsed as such, while message content is text even where it reads like one. The
gateway marks such content as ``GenerateRequest.text_spans``; everything else of the prompt is
tokenized exactly as one special-parsing call would, so a prompt without such spans gets the
same tokens as ever.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from lmaas.protocol.engine import GenerateRequest
from lmaas.worker.backends.base import GenerationBackend

log = logging.getLogger("lmaas.worker")

# Bounds on ``ModelInfo.special_tokens``, so a model file cannot make the gateway's scan of
# message content slow: real vocabularies have a few hundred such tokens, each short.
MAX_SPECIAL_TOKENS = 16_384
MAX_SPECIAL_TOKEN_CHARS = 128


def tokenize_prompt(backend: GenerationBackend, req: GenerateRequest) -> list[int]:
    """The token ids of a text ``req.prompt``: special tokens parsed (with ``parse_special``)
    everywhere but in ``req.text_spans``, a BOS first if ``add_bos`` and the model wants one."""
    assert isinstance(req.prompt, str)
    if not req.text_spans:
        return backend.tokenize(req.prompt, add_bos=req.add_bos, parse_special=req.parse_special)
    ids: list[int] = []
    pos = 0
    for start, end in req.text_spans:
        ids += backend.tokenize(
            req.prompt[pos:start], add_bos=req.add_bos and pos == 0, parse_special=True
        )
        ids += backend.tokenize(req.prompt[start:end], add_bos=False, parse_special=False)
        pos = end
    ids += backend.tokenize(req.prompt[pos:], add_bos=False, parse_special=True)
    return ids


def bounded_special_tokens(texts: Iterable[str], model: str) -> list[str]:
    """The texts a worker reports as ``ModelInfo.special_tokens``: empty ones dropped, at most
    ``MAX_SPECIAL_TOKENS`` of at most ``MAX_SPECIAL_TOKEN_CHARS`` characters (a warning names
    what is left out, which message content could then still produce)."""
    kept: list[str] = []
    skipped = 0
    for text in dict.fromkeys(texts):
        if not text:
            continue
        if len(text) > MAX_SPECIAL_TOKEN_CHARS or len(kept) >= MAX_SPECIAL_TOKENS:
            skipped += 1
            continue
        kept.append(text)
    if skipped:
        log.warning(
            "%s: %d special tokens beyond the limits (%d tokens of %d characters) are not "
            "kept out of chat message content",
            model,
            skipped,
            MAX_SPECIAL_TOKENS,
            MAX_SPECIAL_TOKEN_CHARS,
        )
    return kept
