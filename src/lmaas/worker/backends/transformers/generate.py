"""Text generation on a transformers causal model, in the step loop that also drives llama.cpp.

The step loop (``lmaas.worker.loop``) and its scheduler know sequences as *slots*; this module
gives a PyTorch model slots: one key/value cache per slot, kept as plain tensors between steps.
Each step:

- every slot that decodes one token joins one batched forward pass. Their caches have different
  lengths, so they are left-padded to the longest and the padding is masked out; positions are
  passed per row. While the same slots keep decoding, the padded cache of the last step is
  reused as it is (no copy);
- a slot that prefills (a prompt chunk) runs alone, with only the logits the loop asked for
  computed (``logits_to_keep``).

Sampling is ``sampler.py``'s, under the ``response_format`` automata of ``guides.py``.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from lmaas.config import EngineConfig
from lmaas.protocol.engine import SamplingParams
from lmaas.worker.backends.base import BatchEntry
from lmaas.worker.backends.transformers.guides import Guides
from lmaas.worker.backends.transformers.sampler import TorchSampler, make_sampler, sample

log = logging.getLogger(__name__)

# Tokens that end a turn in common chat formats, beside the tokenizer's own EOS.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>", "</s>", "<|end|>")

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, len, dim]


@dataclass(slots=True)
class _Group:
    """The left-padded cache of the slots that decoded together in the last step."""

    slots: tuple[int, ...]
    lengths: list[int]
    cache: DynamicCache

    @property
    def width(self) -> int:
        return int(self.cache.get_seq_length())


def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character table (GPT-2's scheme)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class TorchSlots:
    """Sequence slots over a transformers causal model (see the module docstring).

    Driven by the step loop's thread only, except ``tokenize``/``piece``/``is_eog``, which the
    IPC reader thread calls and which only read the tokenizer (an instance of its own).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: EngineConfig,
        n_ctx_train: int,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.n_vocab = int(model.config.vocab_size)  # the width of a row of logits
        self.kv_capacity = config.context_size - config.max_num_seqs
        self.max_model_len = min(config.max_model_len or n_ctx_train, n_ctx_train, self.kv_capacity)
        self.max_batch_tokens = config.max_batch_tokens
        # Cached prefixes are slots past max_num_seqs (keys of ``_solo``: there is no bound).
        self.prefix_ids = config.prefix_cache_entries if config.prefix_cache else 0
        # Most causal LMs can compute only the logits asked for; older architectures cannot.
        self._keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._solo: dict[int, KV] = {}
        self._group: _Group | None = None
        self._rows: dict[int, npt.NDArray[np.float32]] = {}
        self._pieces: dict[int, bytes] = {}
        self._special = set(tokenizer.all_special_ids)
        self._eog = self._end_tokens()
        self._byte_level = self._is_byte_level()
        self._bytes = _byte_decoder()
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = min(self._eog, default=0)
        self.guides = Guides(self._vocabulary, int(eos))

    def _vocabulary(self) -> dict[bytes, list[int]]:
        """Every non-special token by the bytes it renders as (what an automaton reads)."""
        tokens: dict[bytes, list[int]] = {}
        for token in range(min(self.n_vocab, len(self.tokenizer))):
            if token in self._special:
                continue
            rendered = self.piece(token)
            if rendered:
                tokens.setdefault(rendered, []).append(token)
        return tokens

    # --- vocabulary ----------------------------------------------------------------------

    def _end_tokens(self) -> set[int]:
        ends: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ends.add(int(self.tokenizer.eos_token_id))
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        if isinstance(eos, int):
            ends.add(eos)
        elif isinstance(eos, list):
            ends.update(int(t) for t in eos)
        vocab = self.tokenizer.get_vocab()
        ends.update(vocab[t] for t in _END_OF_TURN if t in vocab and vocab[t] in self._special)
        return ends

    def _is_byte_level(self) -> bool:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return False
        try:
            decoder = json.loads(backend.to_str()).get("decoder") or {}
        except (ValueError, AttributeError):
            return False
        kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", [])}
        return "ByteLevel" in kinds

    def tokenize(self, text: str, *, add_bos: bool, parse_special: bool) -> list[int]:
        ids = self.tokenizer.encode(
            text, add_special_tokens=add_bos, split_special_tokens=not parse_special
        )
        return [int(t) for t in ids]

    def piece(self, token: int) -> bytes:
        """The bytes a token renders as in output (special tokens render empty)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        out = b""
        if token not in self._special:
            raw = self.tokenizer.convert_ids_to_tokens(token)
            text = raw if isinstance(raw, str) else ""
            if not text:
                out = b""
            elif self._byte_level and all(c in self._bytes for c in text):
                out = bytes(self._bytes[c] for c in text)
            elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                out = bytes([int(text[3:5], 16)])  # a SentencePiece byte token
            elif "▁" in text:
                out = text.replace("▁", " ").encode()
            else:
                out = str(self.tokenizer.decode([token])).encode()
        self._pieces[token] = out
        return out

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    # --- sampling ------------------------------------------------------------------------

    def make_sampler(self, params: SamplingParams) -> TorchSampler:
        return make_sampler(params, self.n_vocab, self.guides)

    def free_sampler(self, sampler: TorchSampler) -> None:
        sampler.counts.clear()
        sampler.guide = None

    def sample(self, sampler: TorchSampler, batch_index: int) -> int:
        return sample(sampler, self._rows[batch_index])

    def logits(self, batch_index: int) -> npt.NDArray[np.float32]:
        return self._rows[batch_index]

    def logprobs_row(self, batch_index: int) -> npt.NDArray[np.float32]:
        row = self._rows[batch_index].astype(np.float32)
        row -= row.max()
        row -= np.log(np.exp(row).sum())
        return row

    # --- slots ---------------------------------------------------------------------------

    def _length(self, slot: int) -> int:
        group = self._group
        if group is not None and slot in group.slots:
            return group.lengths[group.slots.index(slot)]
        kv = self._solo.get(slot)
        return int(kv[0][0].shape[2]) if kv else 0

    def _dissolve(self) -> None:
        """Hand every row of the decode group back to its slot (views, no copy)."""
        group = self._group
        if group is None:
            return
        self._group = None
        width = group.width
        layers: list[Any] = list(group.cache.layers)
        for row, (slot, n) in enumerate(zip(group.slots, group.lengths, strict=True)):
            self._solo[slot] = [
                (
                    layer.keys[row : row + 1, :, width - n :],
                    layer.values[row : row + 1, :, width - n :],
                )
                for layer in layers
            ]

    def clear_slot(self, slot: int) -> None:
        if self._group is not None and slot in self._group.slots:
            self._dissolve()
        self._solo.pop(slot, None)

    def copy_slot(self, src: int, dst: int) -> None:
        """``dst`` becomes ``src``'s cache. The tensors are shared: a cache only ever grows by
        concatenation into new tensors, so neither slot can change the other's."""
        self._dissolve()
        kv = self._solo.get(src)
        if kv is None:
            self._solo.pop(dst, None)
        else:
            self._solo[dst] = list(kv)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """``dst`` becomes the first ``n`` positions of ``src``'s cache (views, no copy)."""
        self._dissolve()
        kv = self._solo.get(src)
        if kv is None or n <= 0:
            self._solo.pop(dst, None)
        else:
            self._solo[dst] = [(k[:, :, :n], v[:, :, :n]) for k, v in kv]

    @staticmethod
    def _cache_of(kv: KV | None) -> DynamicCache:
        cache = DynamicCache()
        for i, (k, v) in enumerate(kv or []):
            cache.update(k, v, i)
        return cache

    # --- decoding ------------------------------------------------------------------------

    def decode(self, entries: Sequence[BatchEntry]) -> int:
        """Run one step; 0 on success, -1 if the model failed (the loop fails the step)."""
        if len(entries) > self.max_batch_tokens:
            raise ValueError("batch larger than max_batch_tokens")
        by_slot: dict[int, list[tuple[int, BatchEntry]]] = {}
        for i, entry in enumerate(entries):
            by_slot.setdefault(entry.slot, []).append((i, entry))
        self._rows = {}
        singles = [s for s, es in by_slot.items() if len(es) == 1 and self._length(s) > 0]
        try:
            with torch.inference_mode():
                for slot, es in by_slot.items():
                    if slot not in singles:
                        self._prefill(slot, es)
                if singles:
                    self._decode_group(singles, [by_slot[s][0] for s in singles])
        except Exception:
            log.exception("transformers forward pass failed")
            self._group = None
            for slot in by_slot:
                self._solo.pop(slot, None)
            return -1
        return 0

    def _keep(self, n: int) -> dict[str, int]:
        return {"logits_to_keep": n} if self._keep_logits else {}

    def _prefill(self, slot: int, es: list[tuple[int, BatchEntry]]) -> None:
        if self._group is not None and slot in self._group.slots:
            self._dissolve()
        start = es[0][1].pos
        kv = self._solo.get(slot)
        have = int(kv[0][0].shape[2]) if kv else 0
        if start < have and kv is not None:  # the loop rewrites from an earlier position
            kv = [(k[:, :, :start], v[:, :, :start]) for k, v in kv]
            have = start
        if start != have:
            raise RuntimeError(f"slot {slot} holds {have} tokens, asked to write at {start}")
        ids = torch.tensor([[e.token for _, e in es]], dtype=torch.long)
        positions = torch.arange(start, start + len(es), dtype=torch.long).unsqueeze(0)
        want = [j for j, (_, e) in enumerate(es) if e.want_logits]
        keep = 1 if want == [len(es) - 1] else len(es)
        out = self.model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=torch.ones((1, start + len(es)), dtype=torch.long),
            past_key_values=self._cache_of(kv),
            use_cache=True,
            **self._keep(keep),
        )
        logits = out.logits[0].float().numpy()
        offset = len(es) - logits.shape[0]
        for j in want:
            self._rows[es[j][0]] = logits[j - offset]
        cache = out.past_key_values
        self._solo[slot] = [(layer.keys, layer.values) for layer in cache.layers]

    def _decode_group(self, slots: list[int], es: list[tuple[int, BatchEntry]]) -> None:
        group = self._group
        if group is None or group.slots != tuple(slots):
            self._dissolve()
            group = self._pad(slots)
        for (_, e), n in zip(es, group.lengths, strict=True):
            if e.pos != n:
                raise RuntimeError(f"slot {e.slot} holds {n} tokens, asked to write at {e.pos}")
        width = group.width
        mask = torch.zeros((len(slots), width + 1), dtype=torch.long)
        for row, n in enumerate(group.lengths):
            mask[row, width - n :] = 1
        out = self.model(
            input_ids=torch.tensor([[e.token] for _, e in es], dtype=torch.long),
            position_ids=torch.tensor([[e.pos] for _, e in es], dtype=torch.long),
            attention_mask=mask,
            past_key_values=group.cache,
            use_cache=True,
            **self._keep(1),
        )
        logits = out.logits[:, -1].float().numpy()
        for row, (i, e) in enumerate(es):
            if e.want_logits:
                self._rows[i] = logits[row]
        group.lengths = [n + 1 for n in group.lengths]
        group.cache = out.past_key_values
        self._group = group

    def _pad(self, slots: list[int]) -> _Group:
        """One cache for ``slots``, each row left-padded to the longest."""
        kvs = [self._solo.pop(s) for s in slots]
        lengths = [int(kv[0][0].shape[2]) for kv in kvs]
        width = max(lengths)
        cache = DynamicCache()
        for layer in range(len(kvs[0])):
            k0, v0 = kvs[0][layer]
            keys = k0.new_zeros((len(slots), k0.shape[1], width, k0.shape[3]))
            values = v0.new_zeros((len(slots), v0.shape[1], width, v0.shape[3]))
            for row, (kv, n) in enumerate(zip(kvs, lengths, strict=True)):
                keys[row, :, width - n :] = kv[layer][0][0]
                values[row, :, width - n :] = kv[layer][1][0]
            cache.update(keys, values, layer)
        return _Group(tuple(slots), lengths, cache)
