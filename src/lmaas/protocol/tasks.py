"""Non-generation work that crosses the gateway <-> worker boundary: embed, classify, score,
tokenize, detokenize.

One ``TaskRequest`` carries every input of one HTTP request; the worker answers with one
``TaskResult`` (or an error). Like generation frames they travel as msgpack maps, never pickle;
embeddings travel as raw little-endian float32 bytes (``numpy.frombuffer`` on the other side).
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

TaskKind = Literal["embed", "classify", "score", "tokenize", "detokenize"]

# What a model can do (ModelInfo.capabilities).
GENERATE: Final = "generate"  # /v1/completions and /v1/chat/completions
EMBED: Final = "embed"  # /v1/embeddings
CLASSIFY: Final = "classify"  # a classification head with fixed labels (ModelInfo.labels)
SCORE: Final = "score"  # log-likelihood of tokens: /v1/score and zero-shot classify / NLI
TOKENIZE: Final = "tokenize"  # /tokenize and /detokenize


class TaskRequest(BaseModel):
    """All inputs of one request. Which fields are used depends on ``kind``:

    - ``embed``: ``texts`` or ``token_ids`` -> one vector each.
    - ``classify``: ``texts`` (or ``pairs``, e.g. premise/hypothesis) -> label probabilities.
    - ``score``: ``token_ids`` with ``score_from`` -> the logprob of every token from
      ``score_from[i]`` on, each predicted from the tokens before it.
    - ``tokenize``: ``texts`` -> ``token_ids``; ``detokenize``: ``token_ids`` -> ``texts``.
    """

    model_config = ConfigDict(extra="forbid")

    request_id: str
    kind: TaskKind
    texts: list[str] | None = None
    pairs: list[tuple[str, str]] | None = None
    token_ids: list[list[int]] | None = None
    score_from: list[int] | None = None
    # Inputs longer than the model's limit are cut to it when true, refused otherwise.
    truncate: bool = False
    # tokenize: add the model's special tokens (BOS, or [CLS]/[SEP]) as a prompt would get.
    add_special: bool = True
    # embed: L2-normalise vectors (sentence-transformers models that end in Normalize do
    # anyway); None = the model's own choice.
    normalize: bool | None = None

    def size(self) -> int:
        """Number of inputs (sequences) in the request."""
        for items in (self.texts, self.pairs, self.token_ids):
            if items is not None:
                return len(items)
        return 0


class TaskResult(BaseModel):
    """What a worker answers to one ``TaskRequest``."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    # embed: n x dim float32, little-endian, row-major.
    embeddings: bytes | None = None
    dim: int | None = None
    # classify: one probability per label for every input, labels in ``labels`` order.
    probs: list[list[float]] | None = None
    labels: list[str] | None = None
    # score: logprobs of the scored tokens of each sequence, and those tokens' text.
    logprobs: list[list[float]] | None = None
    tokens: list[list[str]] | None = None
    # tokenize: ids per text; detokenize: text per id list.
    token_ids: list[list[int]] | None = None
    texts: list[str] | None = None
    # Tokens the model read (after truncation), for usage.
    prompt_tokens: int = 0
    truncated: list[bool] | None = None
    queue_time: float | None = None  # seconds the task waited in the worker before its batch
    batch_size: int = Field(default=1, ge=1)  # inputs in the forward pass it ran in
