"""The transformers backend's model and its tasks: embed, classify, score, tokenize.

``TransformersBackend`` loads the model and runs batches that the task loop
(``lmaas.worker.tasks``) puts together; a causal model also generates, through the step loop
over ``generate.TorchSlots``. What the folder holds decides what the model can do:

- a ``*ForSequenceClassification`` model classifies, labels from ``config.id2label``;
- a ``*ForCausalLM`` model (or a GGUF file) generates and scores tokens (and gives mean-pooled
  embeddings);
- a ``*ForMaskedLM`` model fills its mask tokens (``tokens.fill_mask``), and embeds like an
  encoder;
- an ``lmaas_head.json`` beside an encoder is a linear classifier trained on its embeddings
  (``head.safetensors``: ``weight`` [labels x dim] and ``bias`` [labels]);
- any other encoder (e.g. a sentence-transformers folder) embeds, pooled as its
  ``1_Pooling/config.json`` says (mean by default) and normalised if its ``modules.json``
  ends in ``Normalize``.

Every encoder (not a classifier, not a causal model) also gives each token its contextual
vector (``embed_tokens``, ``tokens.embed_tokens``).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from lmaas.config import EngineConfig, cpu_threads
from lmaas.errors import ContextLengthExceededError, InvalidRequestError
from lmaas.protocol.engine import ModelInfo
from lmaas.protocol.tasks import (
    CLASSIFY,
    EMBED,
    EMBED_TOKENS,
    FILL_MASK,
    GENERATE,
    SCORE,
    TOKENIZE,
    TaskKind,
    TaskRequest,
    TaskResult,
)
from lmaas.worker.backends.transformers import tokens as token_tasks
from lmaas.worker.backends.transformers.generate import TorchSlots
from lmaas.worker.prompt import bounded_special_tokens

log = logging.getLogger(__name__)

HEAD_FILE = "lmaas_head.json"
HEAD_WEIGHTS = "head.safetensors"

FORWARD_CHUNK = 32  # as sentence-transformers' default batch size

Kind = Literal["embedding", "classifier", "head", "causal", "masked"]
Features = dict[str, list[int]]


@dataclass(slots=True)
class Prepared:
    """One request, tokenized and checked."""

    request: TaskRequest
    features: list[Features] = field(default_factory=list)
    score_from: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else None


class TransformersBackend:
    """One model on the CPU. Not thread-safe: the task loop's thread drives everything
    (tokenizers included, whose settings change per call)."""

    def __init__(self, name: str, path: Path, config: EngineConfig) -> None:
        torch.set_num_threads(cpu_threads(config.threads))
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        # A GGUF file goes through transformers' GGUF loader (dequantised to float32); anything
        # else must be a Hugging Face folder with safetensors weights.
        self.gguf = path.is_file() and _is_gguf(path)
        if not path.is_dir() and not self.gguf:
            raise ValueError(f"{path} is neither a Hugging Face model folder nor a GGUF file")
        if not self.gguf and any(path.glob("*.bin")) and not any(path.glob("*.safetensors")):
            raise ValueError("the folder has only pickle (.bin) weights; convert to safetensors")
        self.name = name
        self.path = path
        self.config = config
        self.max_batch = config.max_task_batch
        # Inputs of one batch run length-sorted in chunks of this many (as sentence-transformers
        # does), so a batch collected from many requests pays little for padding.
        self.chunk = min(FORWARD_CHUNK, config.max_task_batch)
        self.max_num_seqs = config.max_num_seqs
        folder = path if path.is_dir() else None
        self.tokenizer = AutoTokenizer.from_pretrained(**self._source())
        self.hf_config = AutoConfig.from_pretrained(**self._source())
        head = _read_json(path / HEAD_FILE) if folder is not None else None
        arch = (getattr(self.hf_config, "architectures", None) or [""])[0]
        self.kind: Kind
        self.labels: list[str] | None = None
        self.head: tuple[torch.Tensor, torch.Tensor] | None = None
        load: Any
        if head is not None:
            self.kind, load = "head", AutoModel
        elif arch.endswith("ForSequenceClassification"):
            self.kind, load = "classifier", AutoModelForSequenceClassification
        elif self.gguf or arch.endswith(("ForCausalLM", "LMHeadModel")):
            self.kind, load = "causal", AutoModelForCausalLM
        elif arch.endswith("ForMaskedLM") and self.tokenizer.mask_token_id is not None:
            self.kind, load = "masked", AutoModelForMaskedLM
        else:
            self.kind, load = "embedding", AutoModel
        weights = {} if self.gguf else {"use_safetensors": True}
        self.model: PreTrainedModel = load.from_pretrained(
            **self._source(), config=self.hf_config, dtype=torch.float32, **weights
        )
        self.model.eval()
        self.pooling, self.normalize = self._pooling(folder)
        if self.kind == "classifier":
            id2label = getattr(self.hf_config, "id2label", None) or {}
            self.labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
        if head is not None:
            self._load_head(path, head)
        self.max_len = self._max_len(folder)
        self.pad_id = self._pad_id()
        self.prefix, self.suffix = self._special_wrap()

    def _source(self) -> dict[str, Any]:
        """Where transformers reads the model from: the folder, or the GGUF file's."""
        if self.gguf:
            return {
                "pretrained_model_name_or_path": str(self.path.parent),
                "gguf_file": self.path.name,
                "local_files_only": True,
            }
        return {"pretrained_model_name_or_path": str(self.path), "local_files_only": True}

    def generator(self) -> TorchSlots:
        """Sequence slots for the step loop, over this (causal) model; a tokenizer of their
        own, since the task loop's thread changes this one's settings per call."""
        if self.kind != "causal":
            raise ValueError(f"model '{self.name}' is not a causal language model")
        n_ctx = int(getattr(self.hf_config, "max_position_embeddings", self.max_len))
        return TorchSlots(self.model, copy.deepcopy(self.tokenizer), self.config, n_ctx)

    # --- loading -------------------------------------------------------------------------

    def _pooling(self, path: Path | None) -> tuple[str, bool]:
        if path is None:
            return "mean", False
        pool = _read_json(path / "1_Pooling" / "config.json") or {}
        mode = "mean"
        if pool.get("pooling_mode_cls_token"):
            mode = "cls"
        elif pool.get("pooling_mode_max_tokens"):
            mode = "max"
        modules_path = path / "modules.json"
        modules = json.loads(modules_path.read_text()) if modules_path.is_file() else []
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        return mode, normalize

    def _load_head(self, path: Path, head: dict[str, Any]) -> None:
        labels = head.get("labels")
        if not isinstance(labels, list) or len(labels) < 2:
            raise ValueError(f"{HEAD_FILE} must list at least two labels")
        tensors = load_file(str(path / HEAD_WEIGHTS))
        weight, bias = tensors["weight"].float(), tensors["bias"].float()
        hidden = int(getattr(self.hf_config, "hidden_size", weight.shape[1]))
        if weight.shape != (len(labels), hidden) or bias.shape != (len(labels),):
            raise ValueError(f"{HEAD_WEIGHTS} does not match {len(labels)} labels x {hidden}")
        self.labels = [str(label) for label in labels]
        self.head = (weight, bias)
        self.normalize = bool(head.get("normalize", self.normalize))

    def _max_len(self, path: Path | None) -> int:
        st = (_read_json(path / "sentence_bert_config.json") if path is not None else None) or {}
        limits = [
            int(st["max_seq_length"]) if "max_seq_length" in st else None,
            getattr(self.hf_config, "max_position_embeddings", None),
            self.tokenizer.model_max_length if self.tokenizer.model_max_length < 1e6 else None,
        ]
        known = [int(x) for x in limits if x]
        return min(known) if known else 512

    def _pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    def _special_wrap(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts around a text: (before, after)."""
        empty = list(self.tokenizer("", add_special_tokens=True)["input_ids"])
        first = self.tokenizer.cls_token_id
        if first is None:
            first = self.tokenizer.bos_token_id
        if empty and first is not None and empty[0] == first:
            return empty[:1], empty[1:]
        return empty, []

    def capabilities(self) -> list[str]:
        return {
            "embedding": [EMBED, EMBED_TOKENS, TOKENIZE],
            "classifier": [CLASSIFY, TOKENIZE],
            "head": [CLASSIFY, EMBED, EMBED_TOKENS, TOKENIZE],
            "causal": [GENERATE, SCORE, EMBED, TOKENIZE],
            "masked": [FILL_MASK, EMBED, EMBED_TOKENS, TOKENIZE],
        }[self.kind]

    def info(self) -> ModelInfo:
        if self.gguf:
            size = self.path.stat().st_size
        else:
            size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        template = getattr(self.tokenizer, "chat_template", None)
        hidden = getattr(self.hf_config, "hidden_size", None)
        return ModelInfo(
            name=self.name,
            path=str(self.path),
            n_vocab=len(self.tokenizer),
            n_ctx_train=int(getattr(self.hf_config, "max_position_embeddings", self.max_len)),
            max_model_len=self.max_len,
            context_size=self.max_len * self.max_batch,
            max_num_seqs=self.max_num_seqs,
            chat_template=template if isinstance(template, str) else None,
            bos_token=str(self.tokenizer.bos_token or self.tokenizer.cls_token or ""),
            eos_token=str(self.tokenizer.eos_token or self.tokenizer.sep_token or ""),
            add_bos=bool(self.prefix),
            bos_token_id=_token_id(self.tokenizer.bos_token_id, self.tokenizer.cls_token_id),
            eos_token_id=_token_id(self.tokenizer.eos_token_id, self.tokenizer.sep_token_id),
            architecture=str(getattr(self.hf_config, "model_type", "unknown")),
            n_params=sum(p.numel() for p in self.model.parameters()),
            size_bytes=size,
            backend="transformers",
            capabilities=self.capabilities(),
            labels=self.labels,
            mask_token=str(self.tokenizer.mask_token) if self.kind == "masked" else None,
            embedding_dim=int(hidden) if hidden and self.kind != "classifier" else None,
            special_tokens=bounded_special_tokens(
                (t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special),
                self.name,
            ),
        )

    # --- preparing one request -----------------------------------------------------------

    def prepare(self, request: TaskRequest) -> Prepared:
        kind = request.kind
        if kind not in ("tokenize", "detokenize") and kind not in self.capabilities():
            raise InvalidRequestError(
                f"model '{self.name}' cannot {kind}; it can: {', '.join(self.capabilities())}",
                param="model",
            )
        prepared = Prepared(request)
        if kind in ("tokenize", "detokenize"):
            return prepared
        if request.token_ids is not None:
            for ids in request.token_ids:
                self._check_ids(ids)
            seqs = (
                [list(ids) for ids in request.token_ids]
                if kind == "score"
                else [self.prefix + list(ids) + self.suffix for ids in request.token_ids]
            )
            prepared.features = [{"input_ids": s} for s in seqs]
        elif request.pairs is not None:
            firsts = [a for a, _ in request.pairs]
            seconds = [b for _, b in request.pairs]
            prepared.features = self._encode(firsts, seconds)
        elif request.texts is not None:
            prepared.features = self._encode(request.texts, None)
        self._fit_lengths(prepared, request)
        if kind == "fill_mask":
            token_tasks.check_masks(self, prepared)
        return prepared

    def _check_ids(self, ids: Sequence[int]) -> None:
        n_vocab = len(self.tokenizer)
        bad = next((t for t in ids if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise InvalidRequestError(
                f"token id {bad} is outside the vocabulary (0..{n_vocab - 1})", param="input"
            )

    def _encode(self, texts: list[str], pairs: list[str] | None, **kw: Any) -> list[Features]:
        enc = self.tokenizer(texts, pairs, add_special_tokens=True, **kw)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        return [{k: list(enc[k][i]) for k in keys} for i in range(len(texts))]

    def _fit_lengths(self, prepared: Prepared, request: TaskRequest) -> None:
        """Refuse inputs over the limit, or cut them to it when ``truncate`` is set."""
        limit = self.max_len
        prepared.truncated = [len(f["input_ids"]) > limit for f in prepared.features]
        if not any(prepared.truncated):
            prepared.score_from = list(request.score_from or [1] * len(prepared.features))
            return
        first = prepared.truncated.index(True)
        if not request.truncate:
            raise ContextLengthExceededError(
                f"input {first} is {len(prepared.features[first]['input_ids'])} tokens; this "
                f"model reads at most {limit}; shorten it or set truncate: true",
                param="input",
            )
        if request.texts is not None or request.pairs is not None:
            idx = [i for i, t in enumerate(prepared.truncated) if t]
            if request.pairs is not None:
                firsts = [request.pairs[i][0] for i in idx]
                seconds: list[str] | None = [request.pairs[i][1] for i in idx]
            else:
                firsts, seconds = [request.texts[i] for i in idx], None  # type: ignore[index]
            cut = self._encode(firsts, seconds, truncation=True, max_length=limit)
            for i, features in zip(idx, cut, strict=True):
                prepared.features[i] = features
        else:
            for f in prepared.features:
                if len(f["input_ids"]) > limit:
                    keep = limit - len(self.suffix) if request.kind != "score" else limit
                    f["input_ids"] = f["input_ids"][:keep] + (
                        self.suffix if request.kind != "score" else []
                    )
        prepared.score_from = [
            min(s, len(f["input_ids"]))
            for s, f in zip(
                request.score_from or [1] * len(prepared.features), prepared.features, strict=True
            )
        ]

    # --- running a batch -----------------------------------------------------------------

    def run_batch(self, kind: TaskKind, prepared: Sequence[Prepared]) -> list[TaskResult]:
        if kind == "tokenize":
            return [self._tokenize(p.request) for p in prepared]
        if kind == "detokenize":
            return [self._detokenize(p.request) for p in prepared]
        if kind in ("fill_mask", "embed_tokens"):
            with torch.inference_mode():
                run = token_tasks.fill_mask if kind == "fill_mask" else token_tasks.embed_tokens
                return run(self, prepared)
        flat = [f for p in prepared for f in p.features]
        results: list[TaskResult] = []
        with torch.inference_mode():
            if kind == "embed":
                vectors = self._forward_all(flat, self._embed_chunk)
            elif kind == "classify":
                vectors = self._forward_all(flat, self._classify_chunk)
            else:
                return self._score(prepared)
        start = 0
        for p in prepared:
            n = len(p.features)
            rows = vectors[start : start + n]
            start += n
            tokens = sum(len(f["input_ids"]) for f in p.features)
            result = TaskResult(
                request_id=p.request.request_id, prompt_tokens=tokens, truncated=p.truncated
            )
            if kind == "embed":
                result.embeddings = np.ascontiguousarray(rows, dtype="<f4").tobytes()
                result.dim = int(rows.shape[1])
            else:
                result.probs = rows.astype(float).tolist()
                result.labels = self.labels
            results.append(result)
        return results

    def _forward_all(self, flat: list[Features], run: Any) -> np.ndarray[Any, Any]:
        """Run ``flat`` in length-sorted chunks (less padding); rows in input order."""
        order = sorted(range(len(flat)), key=lambda i: len(flat[i]["input_ids"]))
        out: list[np.ndarray[Any, Any]] = [np.empty(0)] * len(flat)
        for chunk in self._chunks(order):
            rows = run(self._collate([flat[i] for i in chunk])).float().numpy()
            for j, i in enumerate(chunk):
                out[i] = rows[j]
        return np.stack(out) if out else np.zeros((0, 1), dtype=np.float32)

    def _chunks(self, order: list[int]) -> list[list[int]]:
        """``order`` cut into as few forward passes of at most ``self.chunk`` as it takes, all
        of about the same size (33 inputs run as 17 + 16, not 32 + a lone 1)."""
        if not order:
            return []
        n = -(-len(order) // self.chunk)
        size = -(-len(order) // n)
        return [order[i : i + size] for i in range(0, len(order), size)]

    def _collate(self, features: list[Features]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        types = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
            if "token_type_ids" in f:
                types[i, :n] = torch.tensor(f["token_type_ids"], dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.kind != "causal" and int(getattr(self.hf_config, "type_vocab_size", 0) or 0):
            batch["token_type_ids"] = types
        return batch

    def _hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.kind in ("causal", "masked"):  # a head on top: its input is the last state
            out = self.model(**batch, output_hidden_states=True)
            return out.hidden_states[-1]  # type: ignore[no-any-return]
        return self.model(**batch).last_hidden_state  # type: ignore[no-any-return]

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values
        else:
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled

    def _embed_chunk(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._pool(self._hidden(batch), batch["attention_mask"])

    def _classify_chunk(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.head is not None:
            weight, bias = self.head
            logits = self._embed_chunk(batch) @ weight.T + bias
        else:
            logits = self.model(**batch).logits
        return torch.softmax(logits.float(), dim=-1)

    def _score(self, prepared: Sequence[Prepared]) -> list[TaskResult]:
        flat = [(p_i, f) for p_i, p in enumerate(prepared) for f in p.features]
        starts = [s for p in prepared for s in p.score_from]
        per_seq: list[list[float]] = [[] for _ in flat]
        order = sorted(range(len(flat)), key=lambda i: len(flat[i][1]["input_ids"]))
        for chunk in self._chunks(order):
            batch = self._collate([flat[i][1] for i in chunk])
            logprobs = torch.log_softmax(self.model(**batch).logits.float(), dim=-1)
            for j, i in enumerate(chunk):
                ids = flat[i][1]["input_ids"]
                first = max(starts[i], 1)  # nothing predicts the first token
                targets = torch.tensor(ids[first:], dtype=torch.long)
                rows = logprobs[j, first - 1 : len(ids) - 1]
                per_seq[i] = rows.gather(1, targets.unsqueeze(1)).squeeze(1).tolist()
        results = []
        k = 0
        for p in prepared:
            n = len(p.features)
            lps = per_seq[k : k + n]
            toks = [
                [self.tokenizer.decode([t]) for t in f["input_ids"][max(s, 1) :]]
                for f, s in zip(p.features, p.score_from, strict=True)
            ]
            k += n
            results.append(
                TaskResult(
                    request_id=p.request.request_id,
                    logprobs=lps,
                    tokens=toks,
                    prompt_tokens=sum(len(f["input_ids"]) for f in p.features),
                    truncated=p.truncated,
                )
            )
        return results

    def _tokenize(self, request: TaskRequest) -> TaskResult:
        texts = request.texts or []
        enc = self.tokenizer(texts, add_special_tokens=request.add_special)
        ids = [list(x) for x in enc["input_ids"]]
        return TaskResult(
            request_id=request.request_id,
            token_ids=ids,
            tokens=[self.tokenizer.convert_ids_to_tokens(x) for x in ids],
            prompt_tokens=sum(len(x) for x in ids),
        )

    def _detokenize(self, request: TaskRequest) -> TaskResult:
        seqs = request.token_ids or []
        for ids in seqs:
            self._check_ids(ids)
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in seqs]
        return TaskResult(request_id=request.request_id, texts=texts)


def _token_id(*candidates: object) -> int | None:
    """The first candidate that is a token id (tokenizers report a missing token as None)."""
    for candidate in candidates:
        if isinstance(candidate, int):
            return candidate
    return None
