"""Tasks a llama.cpp worker answers beside generation: tokenize, detokenize, embed.

Tokenize and detokenize only read the vocabulary, so the IPC reader thread runs them at once,
never waiting for the step loop. Embeddings (mean-pooled, L2-normalised) run on a second
context made with ``embeddings`` on and ``pooling_type`` MEAN, created on first use and driven
by its own thread, so they never touch the step loop's context. Scoring (/v1/score, zero-shot
classify and NLI) needs no task: the gateway asks the step loop for prompt logprobs with
``max_tokens: 0``, as completions' ``echo`` does.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import llama_cpp
import numpy as np

from lmaas.config import EngineConfig, cpu_threads
from lmaas.errors import ContextLengthExceededError, InternalError, InvalidRequestError
from lmaas.protocol.engine import ModelInfo
from lmaas.protocol.tasks import EMBED, GENERATE, SCORE, TOKENIZE, TaskRequest, TaskResult
from lmaas.worker.backends.llamacpp.generate import LlamaCppBackend
from lmaas.worker.tasks import EmitFn

log = logging.getLogger(__name__)

_EMBED_CTX = 2048  # longest input embedded at once (tokens)


class LlamaCppTasks:
    def __init__(self, backend: LlamaCppBackend, config: EngineConfig | None = None) -> None:
        self.backend = backend
        self.threads = cpu_threads(config.threads if config is not None else 0)
        self.emit: EmitFn = lambda *_: None
        self._embedder = ThreadPoolExecutor(1, thread_name_prefix="embed")
        self._ctx: Any = None
        self._batch: Any = None
        self._lock = threading.Lock()
        self.embed_len = min(_EMBED_CTX, backend.n_ctx_train)

    def info(self) -> ModelInfo:
        info = self.backend.info()
        info.backend = "llamacpp"
        info.capabilities = [GENERATE, SCORE, TOKENIZE, EMBED]
        info.embedding_dim = int(llama_cpp.llama_model_n_embd(self.backend.model))
        return info

    def run(self, request: TaskRequest) -> TaskResult | None:
        """The result now, or None when it will be emitted later (embeddings)."""
        if request.kind == "tokenize":
            return self._tokenize(request)
        if request.kind == "detokenize":
            return self._detokenize(request)
        if request.kind == "embed":
            ids = self._embed_inputs(request)  # refusals answer at once, on this thread
            self._embedder.submit(self._embed_and_emit, request.request_id, ids)
            return None
        raise InvalidRequestError(
            f"model '{self.backend.name}' (llama.cpp) cannot {request.kind}; it can generate, "
            "score, tokenize and embed",
            param="model",
        )

    # --- embeddings ----------------------------------------------------------------------

    def _embed_inputs(self, request: TaskRequest) -> list[list[int]]:
        b = self.backend
        if request.token_ids is not None:
            seqs = [list(x) for x in request.token_ids]
            for seq in seqs:
                bad = next((t for t in seq if not 0 <= t < b.n_vocab), None)
                if bad is not None:
                    raise InvalidRequestError(
                        f"token id {bad} is outside the vocabulary (0..{b.n_vocab - 1})",
                        param="input",
                    )
        else:
            seqs = [b.tokenize(t, add_bos=True, parse_special=False) for t in request.texts or []]
        for i, seq in enumerate(seqs):
            if len(seq) > self.embed_len:
                if not request.truncate:
                    raise ContextLengthExceededError(
                        f"input {i} is {len(seq)} tokens; this model embeds at most "
                        f"{self.embed_len}; shorten it or set truncate: true",
                        param="input",
                    )
                seqs[i] = seq[: self.embed_len]
        return seqs

    def _embed_and_emit(self, request_id: str, seqs: list[list[int]]) -> None:
        try:
            rows = np.stack([self._embed_one(seq) for seq in seqs])
        except Exception:  # a failure answers the request; it never kills the worker
            log.exception("embedding %s failed", request_id)
            self.emit(request_id, None, InternalError("the model failed to embed this input"))
            return
        result = TaskResult(
            request_id=request_id,
            embeddings=np.ascontiguousarray(rows, dtype="<f4").tobytes(),
            dim=int(rows.shape[1]),
            prompt_tokens=sum(len(s) for s in seqs),
        )
        self.emit(request_id, result, None)

    def _context(self) -> Any:
        if self._ctx is None:
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = self.embed_len
            cparams.n_batch = self.embed_len
            cparams.n_ubatch = self.embed_len
            cparams.n_seq_max = 1
            cparams.embeddings = True
            cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            cparams.n_threads = self.threads
            cparams.n_threads_batch = self.threads
            cparams.no_perf = True
            ctx = llama_cpp.llama_init_from_model(self.backend.model, cparams)
            if not ctx:
                raise RuntimeError("llama.cpp could not create an embeddings context")
            self._ctx = ctx
            self._batch = llama_cpp.llama_batch_init(self.embed_len, 0, 1)
        return self._ctx

    def _embed_one(self, seq: list[int]) -> np.ndarray[Any, np.dtype[np.float32]]:
        ctx = self._context()
        batch = self._batch
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        for i, token in enumerate(seq):
            batch.token[i] = token
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        batch.n_tokens = len(seq)
        status = int(llama_cpp.llama_decode(ctx, batch))
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        ptr = llama_cpp.llama_get_embeddings_seq(ctx, 0)
        n_embd = int(llama_cpp.llama_model_n_embd(self.backend.model))
        vec = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (n_embd,))
        out: np.ndarray[Any, np.dtype[np.float32]] = vec.astype(np.float32)
        norm = float(np.linalg.norm(out))
        if norm > 0:
            out /= norm
        return out

    def _tokenize(self, request: TaskRequest) -> TaskResult:
        b = self.backend
        ids = [
            b.tokenize(text, add_bos=request.add_special, parse_special=False)
            for text in request.texts or []
        ]
        tokens = [[b.piece(t).decode("utf-8", "replace") for t in seq] for seq in ids]
        return TaskResult(
            request_id=request.request_id,
            token_ids=ids,
            tokens=tokens,
            prompt_tokens=sum(len(x) for x in ids),
        )

    def _detokenize(self, request: TaskRequest) -> TaskResult:
        b = self.backend
        texts = []
        for seq in request.token_ids or []:
            bad = next((t for t in seq if not 0 <= t < b.n_vocab), None)
            if bad is not None:
                raise InvalidRequestError(
                    f"token id {bad} is outside the vocabulary (0..{b.n_vocab - 1})",
                    param="tokens",
                )
            texts.append(b"".join(b.piece(t) for t in seq).decode("utf-8", "replace"))
        return TaskResult(request_id=request.request_id, texts=texts)
