"""Tasks a llama.cpp worker answers beside generation: tokenize and detokenize.

They only read the vocabulary, so the IPC reader thread runs them at once, never waiting for
the step loop. Scoring (/v1/score, zero-shot classify and NLI) needs no task: the gateway asks
the step loop for prompt logprobs with ``max_tokens: 0``, as completions' ``echo`` does.
"""

from __future__ import annotations

from lmaas.protocol.engine import ModelInfo
from lmaas.protocol.tasks import GENERATE, SCORE, TOKENIZE, TaskRequest, TaskResult
from lmaas.worker.backends.llamacpp import LlamaCppBackend
from lmaas.worker.tasks import TaskRejected


class LlamaCppTasks:
    def __init__(self, backend: LlamaCppBackend) -> None:
        self.backend = backend

    def info(self) -> ModelInfo:
        info = self.backend.info()
        info.backend = "llamacpp"
        info.capabilities = [GENERATE, SCORE, TOKENIZE]
        return info

    def run(self, request: TaskRequest) -> TaskResult:
        if request.kind == "tokenize":
            return self._tokenize(request)
        if request.kind == "detokenize":
            return self._detokenize(request)
        raise TaskRejected(
            f"model '{self.backend.name}' (llama.cpp) cannot {request.kind}; it can generate, "
            "score and tokenize",
            param="model",
        )

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
                raise TaskRejected(
                    f"token id {bad} is outside the vocabulary (0..{b.n_vocab - 1})",
                    param="tokens",
                )
            texts.append(b"".join(b.piece(t) for t in seq).decode("utf-8", "replace"))
        return TaskResult(request_id=request.request_id, texts=texts)
