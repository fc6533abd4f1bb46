"""Dependency aliases, all of them: routes get their collaborators from ``app.state`` through
these, never from globals and never by reading ``request.app.state`` themselves.

They are ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
per dependency per request that cost ~12% of the gateway's CPU under embeddings load.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from lmaas.engine.client import EngineClient
from lmaas.gateway.auth import (
    require_admin,
    require_inference,
    require_metrics_key,
    sees_internals,
)
from lmaas.gateway.management.models import ModelManagement
from lmaas.gateway.management.requests import RequestRecords
from lmaas.gateway.serving.chat import ChatServing
from lmaas.gateway.serving.classifiers import ClassifierTrainer
from lmaas.gateway.serving.classify import ClassifyServing
from lmaas.gateway.serving.completions import CompletionServing
from lmaas.gateway.serving.embeddings import EmbeddingServing
from lmaas.gateway.serving.scoring import ScoringServing
from lmaas.gateway.shutdown import Drain
from lmaas.keys import KeyInfo
from lmaas.protocol.deploy import DeploymentControl
from lmaas.telemetry.metrics import Metrics


async def _chat(request: Request) -> ChatServing:
    return request.app.state.chat_serving  # type: ignore[no-any-return]


async def _completions(request: Request) -> CompletionServing:
    return request.app.state.completion_serving  # type: ignore[no-any-return]


async def _embeddings(request: Request) -> EmbeddingServing:
    return request.app.state.embedding_serving  # type: ignore[no-any-return]


async def _classify(request: Request) -> ClassifyServing:
    return request.app.state.classify_serving  # type: ignore[no-any-return]


async def _scoring(request: Request) -> ScoringServing:
    return request.app.state.scoring_serving  # type: ignore[no-any-return]


async def _engines(request: Request) -> dict[str, EngineClient]:
    return request.app.state.engines  # type: ignore[no-any-return]


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


async def _started_at(request: Request) -> float:
    return request.app.state.started_at  # type: ignore[no-any-return]


async def _drain(request: Request) -> Drain:
    return request.app.state.drain  # type: ignore[no-any-return]


async def _request_id(request: Request) -> str:
    return str(request.scope["state"]["request_id"])


async def _model_management(request: Request) -> ModelManagement:
    return request.app.state.model_management  # type: ignore[no-any-return]


async def _deployments(request: Request) -> DeploymentControl:
    return request.app.state.deployments  # type: ignore[no-any-return]


async def _request_records(request: Request) -> RequestRecords:
    return request.app.state.request_records  # type: ignore[no-any-return]


async def _classifier_trainer(request: Request) -> ClassifierTrainer:
    return request.app.state.classifier_trainer  # type: ignore[no-any-return]


# Which key rules apply is fixed by the alias a route declares (see gateway/auth.py).
AdminKey = Annotated[KeyInfo, Depends(require_admin)]
InferenceKey = Annotated[KeyInfo | None, Depends(require_inference)]
MetricsKey = Annotated[None, Depends(require_metrics_key)]
SeesInternals = Annotated[bool, Depends(sees_internals)]

ChatServingDep = Annotated[ChatServing, Depends(_chat)]
CompletionServingDep = Annotated[CompletionServing, Depends(_completions)]
EmbeddingServingDep = Annotated[EmbeddingServing, Depends(_embeddings)]
ClassifyServingDep = Annotated[ClassifyServing, Depends(_classify)]
ScoringServingDep = Annotated[ScoringServing, Depends(_scoring)]
EnginesDep = Annotated[dict[str, EngineClient], Depends(_engines)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
StartedAtDep = Annotated[float, Depends(_started_at)]
RequestIdDep = Annotated[str, Depends(_request_id)]
DrainDep = Annotated[Drain, Depends(_drain)]
ModelManagementDep = Annotated[ModelManagement, Depends(_model_management)]
DeploymentsDep = Annotated[DeploymentControl, Depends(_deployments)]
RequestRecordsDep = Annotated[RequestRecords, Depends(_request_records)]
ClassifierTrainerDep = Annotated[ClassifierTrainer, Depends(_classifier_trainer)]
