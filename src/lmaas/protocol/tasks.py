"""Non-generation work that crosses the gateway <-> worker boundary: embed, embed_tokens,
classify, score, fill_mask, tokenize, detokenize.

One ``TaskRequest`` carries every input of one HTTP request; the worker answers with one
``TaskResult`` (or an error). Like generation frames they travel as msgpack maps, never pickle;
embeddings travel as raw little-endian float32 bytes (``numpy.frombuffer`` on the other side).
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

TaskKind = Literal[
    "embed", "embed_tokens", "classify", "score", "fill_mask", "tokenize", "detokenize"
]

# What a model can do (ModelInfo.capabilities).
GENERATE: Final = "generate"  # /v1/completions and /v1/chat/completions
EMBED: Final = "embed"  # /v1/embeddings
CLASSIFY: Final = "classify"  # a classification head with fixed labels (ModelInfo.labels)
SCORE: Final = "score"  # log-likelihood of tokens: /v1/score and zero-shot classify / NLI
TOKENIZE: Final = "tokenize"  # /tokenize and /detokenize
EMBED_TOKENS: Final = "embed_tokens"  # a contextual vector per token (an encoder): /embed
FILL_MASK: Final = "fill_mask"  # a masked language model's guesses: /v1/fill_mask


class TaskRequest(BaseModel):
    """All inputs of one request. Which fields are used depends on ``kind``:

    - ``embed``: ``texts`` or ``token_ids`` -> one vector each.
    - ``embed_tokens``: ``texts`` -> every token of each (special ones left out) with its
      contextual vector: the encoder's last hidden state, not pooled.
    - ``classify``: ``texts`` (or ``pairs``, e.g. premise/hypothesis) -> label probabilities.
    - ``score``: ``token_ids`` with ``score_from`` -> the logprob of every token from
      ``score_from[i]`` on, each predicted from the tokens before it.
    - ``fill_mask``: ``texts``, each with one or more of the model's mask tokens ->
      the ``top_k`` likeliest tokens at each mask.
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
    # fill_mask: guesses per mask.
    top_k: int = Field(default=5, ge=1, le=100)

    def size(self) -> int:
        """Number of inputs (sequences) in the request."""
        for items in (self.texts, self.pairs, self.token_ids):
            if items is not None:
                return len(items)
        return 0


class MaskFill(BaseModel):
    """The likeliest tokens at one mask of a fill_mask input, best first."""

    model_config = ConfigDict(extra="forbid")

    position: int  # the mask's index among the input's tokens (special tokens included)
    token_ids: list[int]
    tokens: list[str]  # each token's text
    scores: list[float]  # each token's probability at the mask
    sequences: list[str]  # the input with this mask filled by each token


class TaskResult(BaseModel):
    """What a worker answers to one ``TaskRequest``."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    # embed: n x dim float32, little-endian, row-major; embed_tokens: one row per token of
    # every input in order, the inputs' tokens in ``tokens``.
    embeddings: bytes | None = None
    dim: int | None = None
    # classify: one probability per label for every input, labels in ``labels`` order.
    probs: list[list[float]] | None = None
    labels: list[str] | None = None
    # fill_mask: for every input, each of its masks.
    fills: list[list[MaskFill]] | None = None
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
