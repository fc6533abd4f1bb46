"""Token-level tasks of the transformers backend: a masked language model's guesses at its mask
tokens (``fill_mask``), and an encoder's contextual vector for every token (``embed_tokens``:
the last hidden state, not pooled, so the same word in two sentences gets two vectors).

Both run a batch of prepared requests in the backend's length-sorted forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmaas.errors import InvalidRequestError
from lmaas.protocol.tasks import MaskFill, TaskResult

if TYPE_CHECKING:
    from lmaas.worker.backends.transformers.tasks import Prepared, TransformersBackend

MAX_MASKS = 32  # mask tokens in one input
# Tokens of the filled sequences one request may ask for (masks x top_k x input length, summed
# over its inputs): each guess comes with the whole input decoded with it filled in.
MAX_FILLED_TOKENS = 1_000_000


def check_masks(backend: TransformersBackend, prepared: Prepared) -> None:
    """Refuse an input without the model's mask token (or with too many of them)."""
    mask_id = backend.tokenizer.mask_token_id
    mask = backend.tokenizer.mask_token
    for i, features in enumerate(prepared.features):
        n = features["input_ids"].count(mask_id)
        where = f"input {i}" if len(prepared.features) > 1 else "the input"
        if n == 0:
            raise InvalidRequestError(
                f"{where} has no mask token: this model's is {mask!r}; write it where the "
                "token to guess goes",
                param="input",
                code="missing_mask_token",
            )
        if n > MAX_MASKS:
            raise InvalidRequestError(
                f"{where} has {n} mask tokens; at most {MAX_MASKS} are allowed", param="input"
            )
    filled = sum(
        f["input_ids"].count(mask_id) * len(f["input_ids"]) * prepared.request.top_k
        for f in prepared.features
    )
    if filled > MAX_FILLED_TOKENS:
        raise InvalidRequestError(
            f"this request asks for {filled:,} tokens of filled-in sequences (mask tokens x "
            f"top_k x input tokens, over its inputs); at most {MAX_FILLED_TOKENS:,}: lower "
            "top_k, or send fewer or shorter inputs",
            param="top_k",
        )


def fill_mask(backend: TransformersBackend, prepared: Sequence[Prepared]) -> list[TaskResult]:
    flat = [f for p in prepared for f in p.features]
    top_ks = [p.request.top_k for p in prepared for _ in p.features]
    fills: list[list[MaskFill]] = [[] for _ in flat]
    order = sorted(range(len(flat)), key=lambda i: len(flat[i]["input_ids"]))
    for chunk in backend._chunks(order):
        logits = backend.model(**backend._collate([flat[i] for i in chunk])).logits
        for j, i in enumerate(chunk):
            fills[i] = _fills(backend, flat[i]["input_ids"], logits[j], top_ks[i])
    results = []
    start = 0
    for p in prepared:
        n = len(p.features)
        results.append(
            TaskResult(
                request_id=p.request.request_id,
                fills=fills[start : start + n],
                prompt_tokens=sum(len(f["input_ids"]) for f in p.features),
                truncated=p.truncated,
            )
        )
        start += n
    return results


def _fills(
    backend: TransformersBackend, ids: list[int], logits: torch.Tensor, top_k: int
) -> list[MaskFill]:
    tokenizer = backend.tokenizer
    mask_id = tokenizer.mask_token_id
    positions = [k for k, t in enumerate(ids) if t == mask_id]
    probs = torch.softmax(logits[positions].float(), dim=-1)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    specials = set(tokenizer.all_special_ids) - {mask_id}
    out = []
    for pos, values, indices in zip(positions, top.values, top.indices, strict=True):
        token_ids = [int(t) for t in indices]
        sequences = []
        for t in token_ids:
            filled = [t if k == pos else x for k, x in enumerate(ids)]
            sequences.append(tokenizer.decode([x for x in filled if x not in specials]))
        out.append(
            MaskFill(
                position=pos,
                token_ids=token_ids,
                tokens=[tokenizer.decode([t]) for t in token_ids],
                scores=[float(v) for v in values],
                sequences=sequences,
            )
        )
    return out


def embed_tokens(backend: TransformersBackend, prepared: Sequence[Prepared]) -> list[TaskResult]:
    flat = [f for p in prepared for f in p.features]
    specials = set(backend.tokenizer.all_special_ids)
    rows: list[np.ndarray[Any, Any]] = [np.empty(0)] * len(flat)
    tokens: list[list[str]] = [[] for _ in flat]
    order = sorted(range(len(flat)), key=lambda i: len(flat[i]["input_ids"]))
    for chunk in backend._chunks(order):
        hidden = backend._hidden(backend._collate([flat[i] for i in chunk])).float()
        for j, i in enumerate(chunk):
            ids = flat[i]["input_ids"]
            keep = [k for k, t in enumerate(ids) if t not in specials]
            rows[i] = hidden[j, keep].numpy()
            tokens[i] = [
                str(t) for t in backend.tokenizer.convert_ids_to_tokens([ids[k] for k in keep])
            ]
    results = []
    start = 0
    for p in prepared:
        n = len(p.features)
        vectors = np.concatenate(rows[start : start + n]) if n else np.zeros((0, 1))
        results.append(
            TaskResult(
                request_id=p.request.request_id,
                embeddings=np.ascontiguousarray(vectors, dtype="<f4").tobytes(),
                dim=int(vectors.shape[1]),
                tokens=tokens[start : start + n],
                prompt_tokens=sum(len(f["input_ids"]) for f in p.features),
                truncated=p.truncated,
            )
        )
        start += n
    return results
