"""The compatibility routes (/generate, /embed) and /v1/fill_mask in-process against fake
engines: their exact shapes, the default model, refusals in the OpenAI envelope, metrics and
request records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from lmaas.config import ModelConfig, Settings
from lmaas.errors import InvalidRequestError
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.keys import KeyStore
from lmaas.protocol.engine import ModelInfo
from lmaas.protocol.tasks import MaskFill, TaskRequest, TaskResult
from tests.fakes import FakeEngine
from tests.fakes_tasks import FakeTaskEngine

DIM = 4


class TokenEngine(FakeTaskEngine):
    """An encoder (``embed_tokens``: word ``i`` of a text gets ``[i, len(word), 0, 0]``) and,
    with ``masked``, a masked LM whose mask token is ``[MASK]``: it guesses ``paris`` (0.9)
    then ``rome`` (0.1) at each mask."""

    def __init__(self, name: str, *, masked: bool = False) -> None:
        caps = ["embed", "embed_tokens", "tokenize"] + (["fill_mask"] if masked else [])
        super().__init__(name, caps)
        self.masked = masked

    @property
    def info(self) -> ModelInfo | None:
        info = super().info
        if info is not None and self.masked:
            info.mask_token = "[MASK]"
        return info

    async def run_task(self, request: TaskRequest) -> TaskResult:
        if request.kind not in ("embed_tokens", "fill_mask"):
            return await super().run_task(request)
        self.tasks.append(request)
        if request.kind not in self.capabilities:
            raise InvalidRequestError(f"model '{self.name}' cannot {request.kind}", param="model")
        texts = request.texts or []
        result = TaskResult(request_id=request.request_id, prompt_tokens=len(texts) * 3)
        if request.kind == "embed_tokens":
            words = [t.split() for t in texts]
            rows = [[float(i), float(len(w)), 0.0, 0.0] for ws in words for i, w in enumerate(ws)]
            result.embeddings = np.array(rows, dtype="<f4").tobytes()
            result.dim, result.tokens = DIM, words
            return result
        result.fills = []
        for i, text in enumerate(texts):
            words = text.split()
            positions = [k + 1 for k, w in enumerate(words) if w == "[MASK]"]
            if not positions:
                raise InvalidRequestError(
                    f"input {i} has no mask token", param="input", code="missing_mask_token"
                )
            top = [("paris", 10, 0.9), ("rome", 12, 0.1)][: request.top_k]
            result.fills.append(
                [
                    MaskFill(
                        position=p,
                        token_ids=[t[1] for t in top],
                        tokens=[t[0] for t in top],
                        scores=[t[2] for t in top],
                        sequences=[text.replace("[MASK]", t[0], 1) for t in top],
                    )
                    for p in positions
                ]
            )
        return result


@pytest.fixture
async def client(keys: KeyStore) -> AsyncIterator[httpx.AsyncClient]:
    engines: dict[str, Any] = {
        "chat": FakeEngine("chat"),
        "encoder": TokenEngine("encoder"),
        "mlm": TokenEngine("mlm", masked=True),
    }
    settings = Settings(models=[ModelConfig(name=n, path="/fake.gguf") for n in engines])
    app = create_app(settings, engines, auth=Authenticator(keys, bind_host="127.0.0.1"))
    app.state.test_engines = engines
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c
    await app.state.chat_serving.close()


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


async def test_generate_returns_the_continuation_of_the_first_generation_model(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/generate", json={"text": "once upon a time", "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert r.json() == {"result": " w0 w1 w2"}
    named = await client.post("/generate", json={"text": "x", "model": "chat", "max_tokens": 1})
    assert named.json() == {"result": " w0"}
    metrics = (await client.get("/metrics")).text
    assert 'lmaas_requests_total{endpoint="/generate",model="chat",status="200"} 2.0' in metrics


async def test_generate_refusals(client: httpx.AsyncClient) -> None:
    assert error_of(await client.post("/generate", json={}), 400)["param"] in ("text", "body")
    extra = error_of(await client.post("/generate", json={"text": "x", "prompt": "y"}), 400)
    assert "prompt" in extra["message"]
    cannot = await client.post("/generate", json={"text": "x", "model": "encoder"})
    assert error_of(cannot, 400)["param"] == "model"
    unknown = await client.post("/generate", json={"text": "x", "model": "nope"})
    assert error_of(unknown, 404)["code"] == "model_not_found"


async def test_embed_returns_every_token_with_its_vector(client: httpx.AsyncClient) -> None:
    r = await client.post("/embed", json={"sentence": "the river bank"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "result": [
            {"token": "the", "embedding": [0.0, 3.0, 0.0, 0.0]},
            {"token": "river", "embedding": [1.0, 5.0, 0.0, 0.0]},
            {"token": "bank", "embedding": [2.0, 4.0, 0.0, 0.0]},
        ]
    }
    assert r.headers["content-type"] == "application/json"


async def test_embed_refuses_a_model_that_cannot_and_a_bad_body(
    client: httpx.AsyncClient,
) -> None:
    cannot = error_of(await client.post("/embed", json={"sentence": "x", "model": "chat"}), 400)
    assert cannot["code"] == "unsupported_task" and "encoder" in cannot["message"]
    assert error_of(await client.post("/embed", json={"text": "x"}), 400)
    assert error_of(await client.post("/embed", json={"sentence": ""}), 400)["param"] == "sentence"


async def test_fill_mask_top_k_tokens_with_scores(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/fill_mask", json={"input": "the capital of france is [MASK] .", "top_k": 2}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "mlm" and body["object"] == "list"
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    (item,) = body["data"]
    assert item["index"] == 0
    (mask,) = item["masks"]
    assert mask["position"] == 6
    assert mask["predictions"] == [
        {
            "token": "paris",
            "token_id": 10,
            "score": 0.9,
            "sequence": "the capital of france is paris .",
        },
        {
            "token": "rome",
            "token_id": 12,
            "score": 0.1,
            "sequence": "the capital of france is rome .",
        },
    ]


async def test_fill_mask_refusals(client: httpx.AsyncClient) -> None:
    missing = await client.post("/v1/fill_mask", json={"model": "mlm", "input": "no mask here"})
    assert error_of(missing, 400)["code"] == "missing_mask_token"
    cannot = await client.post("/v1/fill_mask", json={"model": "encoder", "input": "a [MASK]"})
    error = error_of(cannot, 400)
    assert error["code"] == "unsupported_task" and "mlm" in error["message"]
    for top_k in (0, 101, "3"):
        bad = await client.post("/v1/fill_mask", json={"input": "a [MASK]", "top_k": top_k})
        assert bad.status_code == 400, (top_k, bad.text)
    empty = await client.post("/v1/fill_mask", json={"input": []})
    assert error_of(empty, 400)["param"] == "input"


async def test_without_a_model_that_can_the_default_is_a_clear_400(keys: KeyStore) -> None:
    engines: dict[str, Any] = {"chat": FakeEngine("chat")}
    settings = Settings(models=[ModelConfig(name="chat", path="/fake.gguf")])
    app = create_app(settings, engines, auth=Authenticator(keys, bind_host="127.0.0.1"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for path, body in (("/v1/fill_mask", {"input": "a [MASK]"}), ("/embed", {"sentence": "a"})):
            error = error_of(await c.post(path, json=body), 400)
            assert error["param"] == "model" and "no served model can" in error["message"]
    await app.state.chat_serving.close()


async def test_a_key_limited_to_some_models_gets_its_own_default(
    keys: KeyStore, client: httpx.AsyncClient
) -> None:
    key, _ = keys.create("inference", "limited", models=["mlm"])
    headers = {"Authorization": f"Bearer {key}"}
    r = await client.post("/embed", json={"sentence": "a b"}, headers=headers)
    assert r.status_code == 200 and len(r.json()["result"]) == 2  # mlm, not encoder
    denied = await client.post(
        "/embed", json={"sentence": "a", "model": "encoder"}, headers=headers
    )
    assert denied.status_code == 403


async def test_models_list_what_each_model_can_do_and_its_mask_token(
    client: httpx.AsyncClient,
) -> None:
    cards = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
    assert "fill_mask" in cards["mlm"]["capabilities"] and cards["mlm"]["mask_token"] == "[MASK]"
    assert "embed_tokens" in cards["encoder"]["capabilities"]
    assert cards["encoder"]["mask_token"] is None
    assert "generate" in cards["chat"]["capabilities"]
