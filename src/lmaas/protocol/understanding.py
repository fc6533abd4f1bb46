"""Request models of the understanding endpoints: embeddings (OpenAI's format), classify, nli,
score, tokenize and detokenize.

Text and token ids are ``Text`` and ``TokenId`` of ``protocol.openai``: no lone surrogates,
no token id an engine cannot hold.

Fixed constraints live here; operator limits (``Limits.max_inputs``, ``max_labels``) and what
a model can do are checked in ``gateway/serving``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from lmaas.protocol.openai import Text, TokenId

DEFAULT_HYPOTHESIS = "This text is about {}."


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class EmbeddingRequest(_Request):
    model: Text
    input: Text | list[Text] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[StrictInt | None, Field(ge=1)] = None
    user: Text | None = None
    # lmaas: cut inputs longer than the model reads instead of refusing them.
    truncate: StrictBool = False


class ClassifyRequest(_Request):
    model: Text
    input: Text | list[Text]
    # Zero-shot with a generation model: the labels to choose from, each scored by the
    # log-likelihood of `hypothesis_template` filled with it, following the text.
    candidate_labels: list[Text] | None = None
    hypothesis_template: Text = DEFAULT_HYPOTHESIS
    truncate: StrictBool = False
    user: Text | None = None


class NLIPair(_Request):
    premise: Text
    hypothesis: Text


class NLIRequest(_Request):
    model: Text
    input: NLIPair | list[NLIPair]
    truncate: StrictBool = False
    user: Text | None = None


class ScorePair(_Request):
    """Score only ``continuation``, read after ``prompt``."""

    prompt: Text
    continuation: Text


class ScoreRequest(_Request):
    model: Text
    input: Text | ScorePair | list[Text | ScorePair]
    truncate: StrictBool = False
    user: Text | None = None


class TokenizeRequest(_Request):
    # Optional, as in vLLM: without it, the one served model that can generate.
    model: Text | None = None
    prompt: Text
    add_special_tokens: StrictBool = True


class DetokenizeRequest(_Request):
    model: Text | None = None
    tokens: list[TokenId]


class LabelledExample(_Request):
    text: Annotated[Text, Field(min_length=1)]
    label: Annotated[Text, Field(min_length=1, max_length=128)]


class ClassifierTrainRequest(_Request):
    """Train a linear head on an embedding model's vectors of labelled examples."""

    name: Annotated[
        Text,
        Field(
            min_length=1,
            max_length=128,
            description="Model name of the classifier in the store (a new version if it exists)",
        ),
    ]
    model: Text = Field(
        default="all-minilm-l6-v2", description="A served embedding model (transformers)"
    )
    examples: Annotated[list[LabelledExample], Field(min_length=2)]
    deploy: StrictBool = Field(default=True, description="Serve it (and wait until ready)")
    description: Text = ""


class FillMaskRequest(_Request):
    """A masked language model's guesses at its mask tokens (``[MASK]`` for BERT, ``<mask>``
    for RoBERTa: ``mask_token`` in ``GET /v1/models``). Without ``model``, the first served
    model that can fill masks."""

    model: Text | None = None
    input: Text | list[Text]
    top_k: Annotated[StrictInt, Field(ge=1, le=100)] = 5
    truncate: StrictBool = False
    user: Text | None = None
