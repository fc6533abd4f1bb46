from __future__ import annotations

from fastapi import APIRouter, Request

from lmaas.engine.client import EngineClient
from lmaas.gateway.auth import Authenticator, InferenceKey
from lmaas.gateway.deps import EnginesDep
from lmaas.gateway.serving.common import resolve_engine
from lmaas.protocol.openai import ModelCard, ModelList

router = APIRouter()


def _card(request: Request, engine: EngineClient, name: str) -> ModelCard:
    info = engine.info
    return ModelCard(
        id=name,
        created=int(request.app.state.started_at),
        max_model_len=info.max_model_len if info else None,
        ready=engine.health().ready,
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request, engines: EnginesDep, key: InferenceKey) -> ModelList:
    visible = [n for n in engines if key is None or key.allows_model(n)]
    return ModelList(data=[_card(request, engines[name], name) for name in visible])


@router.get("/v1/models/{model:path}", response_model=ModelCard)
async def get_model(
    model: str, request: Request, engines: EnginesDep, key: InferenceKey
) -> ModelCard:
    Authenticator.authorize_model(key, model)
    return _card(request, resolve_engine(engines, model), model)
