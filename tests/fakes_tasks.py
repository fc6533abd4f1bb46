"""Fake engines for the understanding endpoints: an embedder, classifiers and a scorer."""

from __future__ import annotations

import numpy as np

from lmaas.errors import InvalidRequestError
from lmaas.protocol.engine import ModelInfo
from lmaas.protocol.tasks import TaskRequest, TaskResult
from tests.fakes import FakeEngine, fake_info

DIM = 8
MAX_LEN = 16


class FakeTaskEngine(FakeEngine):
    """Runs tasks without a model: a text is one token per word; its vector is a fixed
    function of its words; a classifier puts 0.7 on the label named in the text, else on
    the first label."""

    def __init__(self, name: str, capabilities: list[str], labels: list[str] | None = None) -> None:
        super().__init__(name)
        self.capabilities = capabilities
        self.labels = labels
        self.tasks: list[TaskRequest] = []

    @property
    def info(self) -> ModelInfo | None:
        if not self.ready:
            return None
        info = fake_info(self.name)
        info.max_model_len = MAX_LEN
        info.backend = "transformers"
        info.capabilities = self.capabilities
        info.labels = self.labels
        info.embedding_dim = DIM if "embed" in self.capabilities else None
        return info

    async def run_task(self, request: TaskRequest) -> TaskResult:
        self.tasks.append(request)
        if request.kind not in self.capabilities and request.kind not in (
            "tokenize",
            "detokenize",
        ):
            raise InvalidRequestError(f"cannot {request.kind}", param="model")
        texts = request.texts or [f"{a} {b}" for a, b in request.pairs or []]
        ids = [[len(w) for w in t.split()] for t in texts] or request.token_ids or []
        too_long = any(len(x) > MAX_LEN for x in ids)
        if too_long and request.kind != "tokenize" and not request.truncate:
            raise InvalidRequestError("too long; set truncate", param="input")
        result = TaskResult(request_id=request.request_id, prompt_tokens=sum(map(len, ids)))
        if request.kind == "embed":
            rows = np.array(
                [[(sum(x) + j) % 5 + 1.0 for j in range(DIM)] for x in ids], dtype="<f4"
            )
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
            result.embeddings, result.dim = rows.tobytes(), DIM
        elif request.kind == "classify":
            labels = self.labels or []
            result.labels = labels
            result.probs = []
            for text in texts:
                hit = next((i for i, lab in enumerate(labels) if lab in text), 0)
                rest = 0.3 / (len(labels) - 1)
                result.probs.append([0.7 if i == hit else rest for i in range(len(labels))])
        elif request.kind == "score":
            result.logprobs = [
                [-1.0] * (len(x) - s) for x, s in zip(ids, request.score_from or [], strict=True)
            ]
            result.tokens = [["t"] * len(lp) for lp in result.logprobs]
        elif request.kind == "tokenize":
            result.token_ids = ids
            result.tokens = [t.split() for t in texts]
        elif request.kind == "detokenize":
            result.texts = [" ".join(f"w{t}" for t in x) for x in ids]
        return result
