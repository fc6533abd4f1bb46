"""/admin/classifiers: train a classifier from labelled examples in one call."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from lmaas.gateway.auth import AdminKey
from lmaas.gateway.deps import RequestIdDep
from lmaas.gateway.serving.classifiers import ClassifierTrainer
from lmaas.protocol.understanding import ClassifierTrainRequest

router = APIRouter(prefix="/admin/classifiers", tags=["admin: classifiers"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def train_classifier(
    body: ClassifierTrainRequest, request: Request, request_id: RequestIdDep, _: AdminKey
) -> dict[str, object]:
    """Embed the examples with `model`, fit a linear head, store it as model `name` and (with
    `deploy`) serve it; it then answers /v1/classify with the examples' labels."""
    trainer: ClassifierTrainer = request.app.state.classifier_trainer
    return await trainer.train(body, request_id)
