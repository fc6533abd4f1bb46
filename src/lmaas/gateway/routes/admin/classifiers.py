"""/admin/classifiers: train a classifier from labelled examples in one call."""

from __future__ import annotations

from fastapi import APIRouter, status

from lmaas.gateway.deps import AdminKey, ClassifierTrainerDep, RequestIdDep
from lmaas.protocol.understanding import ClassifierTrainRequest

router = APIRouter(prefix="/admin/classifiers", tags=["admin: classifiers"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def train_classifier(
    body: ClassifierTrainRequest,
    trainer: ClassifierTrainerDep,
    request_id: RequestIdDep,
    _: AdminKey,
) -> dict[str, object]:
    """Embed the examples with `model`, fit a linear head, store it as model `name` and (with
    `deploy`) serve it; it then answers /v1/classify with the examples' labels."""
    return await trainer.train(body, request_id)
