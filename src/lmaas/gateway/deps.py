"""Dependency aliases, all of them: routes get their collaborators from ``app.state`` through
these, never from globals and never by reading ``request.app.state`` themselves.

They are ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
per dependency per request that cost ~12% of the gateway's CPU under embeddings load.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from lmaas.engine.client import EngineClient
from lmaas.gateway.auth import (
    require_admin,
    require_inference,
    require_metrics_key,
    sees_internals,
)
from lmaas.gateway.management.batches import BatchManagement
from lmaas.gateway.management.eval_runs import EvalRunManagement
from lmaas.gateway.management.evals import EvalManagement
from lmaas.gateway.management.files import FileManagement
from lmaas.gateway.management.fine_tuning import FineTuningManagement
from lmaas.gateway.management.jobs import JobManagement
from lmaas.gateway.management.keys import KeyManagement
from lmaas.gateway.management.models import ModelManagement
from lmaas.gateway.management.plans import PlanManagement
from lmaas.gateway.management.quantize import QuantizeManagement
from lmaas.gateway.management.requests import RequestRecords
from lmaas.gateway.metric_history import MetricHistory
from lmaas.gateway.serving.chat import ChatServing
from lmaas.gateway.serving.classifiers import ClassifierTrainer
from lmaas.gateway.serving.classify import ClassifyServing
from lmaas.gateway.serving.compat import CompatServing
from lmaas.gateway.serving.completions import CompletionServing
from lmaas.gateway.serving.embeddings import EmbeddingServing
from lmaas.gateway.serving.scoring import ScoringServing
from lmaas.gateway.serving.token_tasks import TokenTaskServing
from lmaas.gateway.shutdown import Drain
from lmaas.keys import KeyInfo
from lmaas.protocol.deploy import DeploymentControl
from lmaas.telemetry.metrics import Metrics


def _app_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that hands out ``app.state.<name>``, built once by the app factory."""

    async def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    get.__name__ = f"app_state_{name}"
    return get


async def _request_id(request: Request) -> str:
    return str(request.scope["state"]["request_id"])


# Which key rules apply is fixed by the alias a route declares (see gateway/auth.py).
AdminKey = Annotated[KeyInfo, Depends(require_admin)]
InferenceKey = Annotated[KeyInfo | None, Depends(require_inference)]
MetricsKey = Annotated[None, Depends(require_metrics_key)]
SeesInternals = Annotated[bool, Depends(sees_internals)]

ChatServingDep = Annotated[ChatServing, Depends(_app_state("chat_serving"))]
CompletionServingDep = Annotated[CompletionServing, Depends(_app_state("completion_serving"))]
EmbeddingServingDep = Annotated[EmbeddingServing, Depends(_app_state("embedding_serving"))]
ClassifyServingDep = Annotated[ClassifyServing, Depends(_app_state("classify_serving"))]
ScoringServingDep = Annotated[ScoringServing, Depends(_app_state("scoring_serving"))]
TokenTaskServingDep = Annotated[TokenTaskServing, Depends(_app_state("token_task_serving"))]
CompatServingDep = Annotated[CompatServing, Depends(_app_state("compat_serving"))]
EnginesDep = Annotated[dict[str, EngineClient], Depends(_app_state("engines"))]
MetricsDep = Annotated[Metrics, Depends(_app_state("metrics"))]
StartedAtDep = Annotated[float, Depends(_app_state("started_at"))]
RequestIdDep = Annotated[str, Depends(_request_id)]
DrainDep = Annotated[Drain, Depends(_app_state("drain"))]
ModelManagementDep = Annotated[ModelManagement, Depends(_app_state("model_management"))]
DeploymentsDep = Annotated[DeploymentControl, Depends(_app_state("deployments"))]
RequestRecordsDep = Annotated[RequestRecords, Depends(_app_state("request_records"))]
ClassifierTrainerDep = Annotated[ClassifierTrainer, Depends(_app_state("classifier_trainer"))]
FileManagementDep = Annotated[FileManagement, Depends(_app_state("file_management"))]
BatchManagementDep = Annotated[BatchManagement, Depends(_app_state("batch_management"))]
JobManagementDep = Annotated[JobManagement, Depends(_app_state("job_management"))]
EvalManagementDep = Annotated[EvalManagement, Depends(_app_state("eval_management"))]
EvalRunManagementDep = Annotated[EvalRunManagement, Depends(_app_state("eval_run_management"))]
FineTuningManagementDep = Annotated[
    FineTuningManagement, Depends(_app_state("fine_tuning_management"))
]
QuantizeManagementDep = Annotated[QuantizeManagement, Depends(_app_state("quantize_management"))]
PlanManagementDep = Annotated[PlanManagement, Depends(_app_state("plan_management"))]
KeyManagementDep = Annotated[KeyManagement, Depends(_app_state("key_management"))]
MetricHistoryDep = Annotated[MetricHistory, Depends(_app_state("metric_history"))]
