from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from lmaas.config import (
    DEFAULT_MODEL,
    SHIPPED_MODELS,
    EngineConfig,
    Limits,
    ModelConfig,
    Settings,
    find_package_file,
)
from lmaas.db import create_db_engine, session_factory, upgrade_to_head
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.keys import KeyStore
from tests.fakes import FakeEngine

if TYPE_CHECKING:
    from lmaas.worker.backends.llamacpp.generate import LlamaCppBackend


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine("fake")


@pytest.fixture
def settings() -> Settings:
    return Settings(
        models=[ModelConfig(name="fake", path="/fake.gguf")], limits=Limits(max_queue=2)
    )


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    db = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
    upgrade_to_head(db)
    return KeyStore(session_factory(db), cache_ttl=0)


@pytest.fixture
async def client(
    engine: FakeEngine, settings: Settings, keys: KeyStore
) -> AsyncIterator[httpx.AsyncClient]:
    auth = Authenticator(keys, bind_host="127.0.0.1")
    app = create_app(settings, {"fake": engine}, auth=auth)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
    await app.state.chat_serving.close()  # the lifespan would; ASGITransport does not run it


@pytest.fixture(scope="module")
def shipped_llama() -> Iterator[LlamaCppBackend]:
    """The shipped SmolLM2 on the real llama.cpp backend, in process (a small context)."""
    from lmaas.worker.backends.llamacpp.generate import LlamaCppBackend

    shipped = SHIPPED_MODELS[DEFAULT_MODEL]
    path = find_package_file(shipped.package, shipped.file)
    llama = LlamaCppBackend(DEFAULT_MODEL, path, EngineConfig(context_size=512, max_num_seqs=2))
    yield llama
    llama.close()
