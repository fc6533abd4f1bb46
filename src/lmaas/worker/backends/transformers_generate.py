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

Sampling follows llama.cpp's chain order on the raw logits of a row: logit bias, repetition /
frequency / presence penalties over the tokens generated so far, then greedy (temperature 0)
or top-k, top-p and min-p on the softmax, temperature and a draw from a per-request seeded
generator. ``response_format`` (``json_object`` / ``json_schema``) is enforced by a finite
automaton over the vocabulary compiled by outlines-core from the schema's regular expression: at
each step only tokens the automaton accepts keep their logits. Raw GBNF grammars are llama.cpp's
and are refused here.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from outlines_core import Guide, Index, Vocabulary
from outlines_core.json_schema import build_regex_from_schema
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from lmaas.config import EngineConfig
from lmaas.protocol.engine import SamplingParams
from lmaas.worker.backends.base import BackendError, BatchEntry

log = logging.getLogger(__name__)

_GREEDY_EPS = 1e-5
# Tokens that end a turn in common chat formats, beside the tokenizer's own EOS.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>", "</s>", "<|end|>")

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, len, dim]


# ``response_format: json_object``: any JSON object (outlines-core's regex for it nests a few
# levels deep). Compiling it over a 49k vocabulary takes ~11 s, so workers start on it at load.
JSON_OBJECT_SCHEMA = '{"type": "object"}'
GUIDE_CACHE = 32


class Guides:
    """Structured-output automata, one per regular expression, compiled on a thread of their
    own (never the IPC reader's, which must keep answering health pings) and kept LRU."""

    def __init__(
        self, pieces: Callable[[], dict[bytes, list[int]]], eos_id: int, wait_s: float = 5.0
    ) -> None:
        self._pieces = pieces
        self._eos_id = eos_id
        self.wait_s = wait_s
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="guides")
        self._vocabulary: Vocabulary | None = None
        self._cache: OrderedDict[str, Future[Index]] = OrderedDict()
        self._lock = threading.Lock()

    def prefetch(self, regex: str) -> Future[Index]:
        with self._lock:
            future = self._cache.get(regex)
            if future is None:
                future = self._pool.submit(self._compile, regex)
                self._cache[regex] = future
                while len(self._cache) > GUIDE_CACHE:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(regex)
            return future

    def _compile(self, regex: str) -> Index:
        if self._vocabulary is None:
            self._vocabulary = Vocabulary(self._eos_id, self._pieces())
        return Index(regex, self._vocabulary)

    def guide(self, regex: str) -> Guide:
        future = self.prefetch(regex)
        try:
            index = future.result(timeout=self.wait_s)
        except FutureTimeout:
            raise BackendError(
                "this response_format is still being compiled for this model (a large schema "
                "takes a while the first time); retry in a few seconds",
                "response_format",
            ) from None
        except Exception as exc:  # outlines-core raises on regexes it cannot turn into an FSM
            with self._lock:
                self._cache.pop(regex, None)
            raise BackendError(
                f"the JSON schema cannot be compiled: {exc}", "response_format.json_schema.schema"
            ) from exc
        return Guide(index)


def schema_regex(schema: dict[str, Any]) -> str:
    text = JSON_OBJECT_SCHEMA if schema == {} else json.dumps(schema)
    try:
        return str(build_regex_from_schema(text))
    except Exception as exc:  # unsupported keywords and malformed schemas
        raise BackendError(
            f"the JSON schema cannot be turned into a constraint: {exc}",
            "response_format.json_schema.schema",
        ) from exc


@dataclass(slots=True)
class TorchSampler:
    """One sequence's sampling state: its settings, its random generator, what it generated,
    and the automaton its output must follow, if any."""

    params: SamplingParams
    rng: np.random.Generator
    counts: dict[int, int] = field(default_factory=dict)
    bias_ids: npt.NDArray[np.int64] | None = None
    bias_values: npt.NDArray[np.float64] | None = None
    guide: Guide | None = None


def make_sampler(
    params: SamplingParams, n_vocab: int, guides: Guides | None = None
) -> TorchSampler:
    if params.grammar is not None or (params.json_schema is not None and guides is None):
        raise BackendError(
            "GBNF grammars are served by llama.cpp (GGUF) models only; this model runs on "
            "transformers, which takes response_format json_object or json_schema",
            "response_format",
        )
    sampler = TorchSampler(params, np.random.default_rng(params.seed))
    if params.logit_bias:
        ids = np.fromiter(params.logit_bias, dtype=np.int64)
        if ids.min() < 0 or ids.max() >= n_vocab:
            raise BackendError("logit_bias names a token outside the vocabulary", "logit_bias")
        sampler.bias_ids = ids
        sampler.bias_values = np.fromiter(params.logit_bias.values(), dtype=np.float64)
    if params.json_schema is not None and guides is not None:
        sampler.guide = guides.guide(schema_regex(params.json_schema))
    return sampler


def _softmax(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    e = np.exp(x - x.max())
    return e / e.sum()  # type: ignore[no-any-return]


def sample(sampler: TorchSampler, logits: npt.NDArray[np.floating[Any]]) -> int:
    """Pick the next token from one row of raw logits and remember it (for the penalties)."""
    p = sampler.params
    x = logits.astype(np.float64)
    if sampler.guide is not None:  # only what the automaton accepts next
        allowed = np.asarray(sampler.guide.get_tokens(), dtype=np.int64)
        masked = np.full_like(x, -np.inf)
        masked[allowed] = x[allowed]
        x = masked
    if sampler.bias_ids is not None and sampler.bias_values is not None:
        x[sampler.bias_ids] += sampler.bias_values
    if sampler.counts and (
        p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
    ):
        ids = np.fromiter(sampler.counts, dtype=np.int64)
        counts = np.fromiter(sampler.counts.values(), dtype=np.float64)
        seen = x[ids]
        seen = np.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
        x[ids] = seen - counts * p.frequency_penalty - p.presence_penalty
    if p.temperature < _GREEDY_EPS:
        token = int(np.argmax(x))
    else:
        k = p.top_k if 0 < p.top_k < len(x) else len(x)
        ids = np.argpartition(x, -k)[-k:] if k < len(x) else np.arange(len(x))
        vals = x[ids]
        order = np.argsort(-vals, kind="stable")
        ids, vals = ids[order], vals[order]
        if p.top_p < 1.0 or p.min_p > 0.0:
            probs = _softmax(vals)
            keep = np.ones(len(ids), dtype=bool)
            if p.top_p < 1.0:  # the smallest prefix whose mass reaches top_p
                keep &= (np.cumsum(probs) - probs) < p.top_p
            if p.min_p > 0.0:
                keep &= probs >= p.min_p * probs[0]
            keep[0] = True
            ids, vals = ids[keep], vals[keep]
        token = int(sampler.rng.choice(ids, p=_softmax(vals / p.temperature)))
    sampler.counts[token] = sampler.counts.get(token, 0) + 1
    if sampler.guide is not None and not sampler.guide.is_finished():
        sampler.guide.advance(token)
    return token


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
