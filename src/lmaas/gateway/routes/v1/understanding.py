"""The understanding endpoints: embeddings, classify, nli, score, tokenize, detokenize, and
the tokenizer's settings (``/tokenizer_info``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from lmaas.gateway.deps import (
    ClassifyServingDep,
    EmbeddingServingDep,
    InferenceKey,
    RequestIdDep,
    ScoringServingDep,
    TokenTaskServingDep,
)
from lmaas.gateway.routes.v1.docs import ERROR_RESPONSES
from lmaas.protocol.understanding import (
    ClassifyRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    FillMaskRequest,
    NLIRequest,
    ScoreRequest,
    TokenizeRequest,
)

router = APIRouter()


@router.post("/v1/embeddings", responses=ERROR_RESPONSES)
async def create_embeddings(
    body: EmbeddingRequest,
    request: Request,
    serving: EmbeddingServingDep,
    request_id: RequestIdDep,
    key: InferenceKey,
) -> Response:
    """Vectors for texts or token-id lists (OpenAI's format); `encoding_format: base64`."""
    return await serving.create(body, request, request_id, key)


@router.post("/v1/fill_mask", responses=ERROR_RESPONSES)
async def fill_mask(
    body: FillMaskRequest,
    request: Request,
    serving: TokenTaskServingDep,
    request_id: RequestIdDep,
    key: InferenceKey,
) -> Response:
    """A masked language model's `top_k` likeliest tokens (with probabilities) at each mask
    token of the input; without `model`, the first served model that can fill masks."""
    return await serving.fill_mask(body, request, request_id, key)


@router.post("/v1/classify", responses=ERROR_RESPONSES)
async def classify(
    body: ClassifyRequest,
    request: Request,
    serving: ClassifyServingDep,
    request_id: RequestIdDep,
    key: InferenceKey,
) -> Response:
    """Label probabilities: a classifier's own labels, or zero-shot `candidate_labels`."""
    return await serving.classify(body, request, request_id, key)


@router.post("/v1/nli", responses=ERROR_RESPONSES)
async def nli(
    body: NLIRequest,
    request: Request,
    serving: ClassifyServingDep,
    request_id: RequestIdDep,
    key: InferenceKey,
) -> Response:
    """Entailment / neutral / contradiction probabilities of premise-hypothesis pairs."""
    return await serving.nli(body, request, request_id, key)


@router.post("/v1/score", responses=ERROR_RESPONSES)
async def score(
    body: ScoreRequest,
    request: Request,
    serving: ScoringServingDep,
    request_id: RequestIdDep,
    key: InferenceKey,
) -> Response:
    """Per-token logprobs, total log-likelihood and perplexity of texts (or continuations)."""
    return await serving.score(body, request, request_id, key)


@router.post("/tokenize", responses=ERROR_RESPONSES)
async def tokenize(
    body: TokenizeRequest,
    request: Request,
    serving: ScoringServingDep,
    request_id: RequestIdDep,
    key: InferenceKey,
) -> Response:
    """Token ids of a text under a served model's tokenizer."""
    return await serving.tokenize_endpoint(body, request, request_id, key)


@router.post("/detokenize", responses=ERROR_RESPONSES)
async def detokenize(
    body: DetokenizeRequest,
    request: Request,
    serving: ScoringServingDep,
    request_id: RequestIdDep,
    key: InferenceKey,
) -> Response:
    """The text of token ids under a served model's tokenizer."""
    return await serving.detokenize_endpoint(body, request, request_id, key)


@router.get("/tokenizer_info", responses=ERROR_RESPONSES)
async def tokenizer_info(
    request: Request,
    serving: ScoringServingDep,
    key: InferenceKey,
    model: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """A served model's tokenizer settings (tokenizer_config.json's names, as vLLM has them):
    special tokens and their ids, whether a BOS is added, the context length, the chat
    template. Without `model`, the one served model that can generate."""
    return await serving.tokenizer_info(model, request, key)
