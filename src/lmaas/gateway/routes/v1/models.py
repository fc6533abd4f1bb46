from __future__ import annotations

from fastapi import APIRouter

from lmaas.engine.client import EngineClient
from lmaas.gateway.auth import Authenticator
from lmaas.gateway.deps import EnginesDep, InferenceKey, StartedAtDep
from lmaas.gateway.serving.common import resolve_engine
from lmaas.protocol.openai import ModelCard, ModelList

router = APIRouter()


def _card(started_at: float, engine: EngineClient, name: str) -> ModelCard:
    info = engine.info
    return ModelCard(
        id=name,
        created=int(started_at),
        max_model_len=info.max_model_len if info else None,
        ready=engine.health().ready,
        backend=info.backend if info else None,
        capabilities=list(info.capabilities) if info else None,
        mask_token=info.mask_token if info else None,
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(
    engines: EnginesDep, started_at: StartedAtDep, key: InferenceKey
) -> ModelList:
    visible = [n for n in engines if key is None or key.allows_model(n)]
    return ModelList(data=[_card(started_at, engines[name], name) for name in visible])


@router.get("/v1/models/{model:path}", response_model=ModelCard)
async def get_model(
    model: str, engines: EnginesDep, started_at: StartedAtDep, key: InferenceKey
) -> ModelCard:
    Authenticator.authorize_model(key, model)
    return _card(started_at, resolve_engine(engines, model), model)
