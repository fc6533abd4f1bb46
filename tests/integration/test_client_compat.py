"""What real clients lean on, in-process against fake engines (issue 14): vLLM's tokenizer
routes without ``model`` and ``/tokenizer_info`` (lm-evaluation-harness's remote tokenizer),
the end-of-text token reported by completions' logprobs, unknown routes answered 404 whatever
their body, and ``/docs`` and ``/redoc`` with nothing loaded from elsewhere."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from lmaas.config import ModelConfig, Settings
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.keys import KeyStore
from lmaas.protocol.engine import FinishReason, GenerateRequest, TokenEvent, TokenLogprob
from tests.bad_inputs import check_error_envelope
from tests.fakes import FakeEngine
from tests.fakes_tasks import FakeTaskEngine


async def _client(engines: dict[str, Any], keys: KeyStore) -> httpx.AsyncClient:
    settings = Settings(models=[ModelConfig(name=n, path="/fake") for n in engines])
    app = create_app(settings, dict(engines), auth=Authenticator(keys, bind_host="127.0.0.1"))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture
async def api(keys: KeyStore) -> AsyncIterator[httpx.AsyncClient]:
    engines = {
        "gen": FakeTaskEngine("gen", ["generate", "score", "tokenize"]),
        "emb": FakeTaskEngine("emb", ["embed", "tokenize"]),
    }
    async with await _client(engines, keys) as c:
        yield c


async def test_tokenizer_routes_default_to_the_one_generation_model(
    api: httpx.AsyncClient,
) -> None:
    r = await api.get("/tokenizer_info")
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["model"] == "gen"
    assert info["eos_token"] == "</s>" and info["bos_token"] == "<s>"
    assert info["tokenizer_class"] and info["model_max_length"] == 16
    assert info["add_bos_token"] is False and "chat_template" in info
    assert (await api.get("/tokenizer_info", params={"model": "emb"})).json()["model"] == "emb"

    r = await api.post("/tokenize", json={"prompt": "ab c", "add_special_tokens": False})
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == [2, 1] and r.json()["model"] == "gen"
    r = await api.post("/detokenize", json={"tokens": [2, 1]})
    assert r.status_code == 200 and isinstance(r.json()["prompt"], str)
    # Naming a model still works, and an unknown one is still a 404.
    assert (await api.post("/tokenize", json={"model": "emb", "prompt": "x"})).status_code == 200
    r = await api.get("/tokenizer_info", params={"model": "nope"})
    assert r.status_code == 404 and check_error_envelope(r.json())["param"] == "model"


async def test_two_generation_models_need_a_name(keys: KeyStore) -> None:
    engines = {n: FakeTaskEngine(n, ["generate", "tokenize"]) for n in ("a", "b")}
    async with await _client(engines, keys) as api:
        for r in (
            await api.get("/tokenizer_info"),
            await api.post("/tokenize", json={"prompt": "x"}),
            await api.post("/detokenize", json={"tokens": [1]}),
        ):
            assert r.status_code == 400, r.text
            err = check_error_envelope(r.json())
            assert err["param"] == "model" and "a, b" in err["message"]


class _EndsAtOnce(FakeEngine):
    """A model whose first generated token is the end-of-text token (logprob -0.25)."""

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        n = len(request.prompt) if isinstance(request.prompt, list) else 3
        plp = [TokenLogprob(0, "a", [97], None)] + [
            TokenLogprob(1, "b", [98], -1.0, [(1, "b", [98], -1.0)]) for _ in range(n - 1)
        ]
        eos = TokenLogprob(2, "", [], -0.25, [(2, "", [], -0.25)])
        yield TokenEvent(
            request.request_id,
            finish_reason=FinishReason.STOP,
            prompt_tokens=n,
            prompt_logprobs=plp if request.prompt_logprobs is not None else None,
            stop_logprob=eos if request.logprobs is not None else None,
        )


@pytest.mark.parametrize("stream", [False, True])
async def test_the_end_of_text_token_is_the_last_logprobs_entry(
    keys: KeyStore, stream: bool
) -> None:
    """lm-eval's loglikelihood sends echo + logprobs + max_tokens 1 and drops the last entry
    as the generated token: an answer ending in end-of-text must still have that entry."""
    async with await _client({"m": _EndsAtOnce("m")}, keys) as api:
        body = {
            "model": "m",
            "prompt": [5, 6, 7],
            "max_tokens": 1,
            "echo": True,
            "logprobs": 1,
            "temperature": 0,
            "stream": stream,
        }
        r = await api.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        if stream:
            chunks = [
                httpx.Response(200, content=line[6:]).json()["choices"][0]
                for line in r.text.splitlines()
                if line.startswith("data: {")
            ]
            lps = [c["logprobs"] for c in chunks if c["logprobs"]]
            token_logprobs = [x for lp in lps for x in lp["token_logprobs"]]
            finish = chunks[-1]["finish_reason"]
        else:
            choice = r.json()["choices"][0]
            token_logprobs = choice["logprobs"]["token_logprobs"]
            assert choice["logprobs"]["tokens"] == ["a", "b", "b", ""]
            assert choice["text"] == "abb"
            finish = choice["finish_reason"]
        assert token_logprobs == [None, -1.0, -1.0, -0.25]
        assert finish == "stop"
        # Without logprobs nothing changes: no entry, the text alone.
        r = await api.post("/v1/completions", json={**body, "logprobs": None, "stream": False})
        assert r.json()["choices"][0]["logprobs"] is None


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data; boundary=x", "text/plain", "application/json", None],
)
async def test_unknown_routes_are_404_whatever_the_body(
    api: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/v1/nope", "/v1/chat/completion", "/v1/files/x/y/z"):
        r = await api.post(path, content=b"--x\r\n", headers=headers)
        assert r.status_code == 404, (path, r.text)
        assert check_error_envelope(r.json())["code"] == "not_found"
    # A route that exists keeps its checks.
    r = await api.post("/v1/completions", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415


async def test_docs_load_nothing_from_elsewhere(api: httpx.AsyncClient) -> None:
    for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        r = await api.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        urls += re.findall(r"""(?:url|spec-url)[=:]\s*["']([^"']+)["']""", html)
        assert urls and any(u.endswith(script) for u in urls), html
        assert "//" not in "".join(urls), urls  # no scheme-relative or absolute URL
        assert "http" not in html.replace("http-equiv", ""), html
        for url in urls:
            asset = await api.get(url)
            assert asset.status_code == 200, url
            if url.endswith(".js"):
                assert "javascript" in asset.headers["content-type"]
                assert len(asset.content) > 100_000  # the real bundle, not a stub
    assert (await api.get("/openapi.json")).status_code == 200
