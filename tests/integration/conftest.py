from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from lmaas.config import Limits, ModelConfig, Settings
from lmaas.gateway.app import create_app
from tests.fakes import FakeEngine


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine("fake")


@pytest.fixture
def settings() -> Settings:
    return Settings(
        models=[ModelConfig(name="fake", path="/fake.gguf")], limits=Limits(max_queue=2)
    )


@pytest.fixture
async def client(engine: FakeEngine, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, {"fake": engine})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
