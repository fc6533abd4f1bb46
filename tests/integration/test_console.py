"""The console's server side in process: / redirects to /ui, the page and its built assets with
their types and the Content-Security-Policy, nothing in the assets that loads from elsewhere,
and the admin read endpoints the console uses (metric history, keys, one request record)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from lmaas.config import ModelConfig, Settings
from lmaas.db import create_db_engine, session_factory, upgrade_to_head
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.gateway.ui.console import STATIC_DIR
from lmaas.keys import KeyStore
from lmaas.records.store import RecordStore, RequestRecord
from tests.fakes import FakeEngine

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
# Namespace names that scripts pass to createElementNS: identifiers, never fetched.
XML_NAMESPACES = {
    "http://www.w3.org/2000/svg",
    "http://www.w3.org/1999/xhtml",
    "http://www.w3.org/1999/xlink",
    "http://www.w3.org/1998/Math/MathML",
    "http://www.w3.org/XML/1998/namespace",
    "http://www.w3.org/2000/xmlns/",
}


class Console:
    def __init__(self, app: FastAPI, admin_key: str, keys: KeyStore, records: RecordStore) -> None:
        self.app = app
        self.transport = httpx.ASGITransport(app=app)
        self.anyone = httpx.AsyncClient(transport=self.transport, base_url="http://test")
        self.admin = httpx.AsyncClient(
            transport=self.transport,
            base_url="http://test",
            headers={"Authorization": f"Bearer {admin_key}"},
        )
        self.keys = keys
        self.records = records


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    db = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
    upgrade_to_head(db)
    sessions = session_factory(db)
    keys = KeyStore(sessions, cache_ttl=0)
    admin_key, _ = keys.create("admin", "console")
    records = RecordStore(sessions)
    app = create_app(
        Settings(models=[ModelConfig(name="fake", path="/fake.gguf")]),
        {"fake": FakeEngine("fake")},
        auth=Authenticator(keys, bind_host="127.0.0.1"),
        record_store=records,
    )
    c = Console(app, admin_key, keys, records)
    async with c.anyone, c.admin:
        yield c
    await app.state.chat_serving.close()
    db.dispose()


def _assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/ui/assets/[^"]+)"', html)


async def test_root_redirects_to_the_console(console: Console) -> None:
    r = await console.anyone.get("/")
    assert r.status_code == 307 and r.headers["location"] == "/ui"


async def test_the_page_and_its_assets_carry_the_csp_and_their_types(console: Console) -> None:
    page = await console.anyone.get("/ui")  # the page itself needs no key: the API calls do
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    for name in ("default-src", "script-src", "style-src", "connect-src", "font-src"):
        assert directives[name] == "'self'", name
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert (await console.anyone.get("/ui/")).status_code == 200
    assets = _assets(page.text)
    kinds = {Path(a).suffix for a in assets}
    assert kinds == {".js", ".css"}, assets
    for path in assets:
        r = await console.anyone.get(path)
        assert r.status_code == 200, path
        expected = "javascript" if path.endswith(".js") else "text/css"
        assert expected in r.headers["content-type"], (path, r.headers["content-type"])
        assert r.headers["content-security-policy"] == csp
        assert "immutable" in r.headers["cache-control"]
    missing = await console.anyone.get("/ui/assets/nope.js")
    assert missing.status_code == 404


def test_the_built_assets_load_nothing_from_another_origin() -> None:
    index = (STATIC_DIR / "index.html").read_text()
    files = [STATIC_DIR / "index.html", *sorted((STATIC_DIR / "assets").iterdir())]
    assert len(files) >= 3, "the console is not built: run `make ui`"
    # No inline script or style (the CSP would block them) and every reference is local.
    assert "<style" not in index
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", index))
    for ref in re.findall(r'(?:src|href)="([^"]*)"', index):
        assert ref.startswith("/ui/assets/") or ref == "data:,", ref
    for path in files:
        text = path.read_text(errors="replace")
        urls = set(re.findall(r"https?://[^\s\"'`)<>\\]*", text))
        assert urls <= XML_NAMESPACES, (path.name, urls - XML_NAMESPACES)
        assert not re.search(r"""["'(]//[a-z0-9.-]+\.[a-z]{2,}""", text), path.name
        assert not re.search(r"@import\s+url", text), path.name


async def test_metric_history_needs_an_admin_key_and_shows_the_traffic(console: Console) -> None:
    assert (await console.anyone.get("/admin/metrics/history")).status_code == 401
    history = console.app.state.metric_history
    history.sample()  # the baseline
    for _ in range(3):
        assert (await console.admin.post("/v1/chat/completions", json=CHAT)).status_code == 200
    bad = await console.admin.post("/v1/chat/completions", json={**CHAT, "max_tokens": -1})
    assert bad.status_code == 400
    history.sample()
    r = await console.admin.get("/admin/metrics/history")
    assert r.status_code == 200
    body = r.json()
    assert body["interval_s"] == 5.0 and body["retention_s"] == 3600.0
    (sample,) = body["samples"]
    fake = sample["models"]["fake"]
    per_s = fake["requests_per_s"]
    assert set(per_s) == {"200"} and per_s["200"] > 0
    # A body refused before its model is read counts as the middleware labels it: "unknown".
    refused = sample["models"]["unknown"]["requests_per_s"]
    assert set(refused) == {"400"} and refused["400"] == pytest.approx(per_s["200"] / 3, abs=1e-3)
    assert fake["generation_tokens_per_s"] > 0
    assert set(fake["ttft"]) == {"p50", "p90", "p99"}
    assert fake["replicas"] == {"ready": 1}
    later = await console.admin.get("/admin/metrics/history", params={"after": sample["t"]})
    assert later.json()["samples"] == []
    other = await console.admin.get("/admin/metrics/history", params={"model": "nope"})
    assert other.json()["samples"][0]["models"] == {}


async def test_keys_are_created_once_listed_without_secrets_and_revoked(console: Console) -> None:
    assert (await console.anyone.get("/admin/keys")).status_code == 401
    made = await console.admin.post(
        "/admin/keys", json={"name": "app", "scope": "inference", "models": ["fake"], "rpm": 60}
    )
    assert made.status_code == 201, made.text
    key = made.json()
    assert key["key"].startswith("lmaas-") and key["scope"] == "inference" and key["rpm"] == 60
    listed = await console.admin.get("/admin/keys")
    listed_keys = listed.json()["data"]
    assert key["key"] not in listed.text and all("key" not in k for k in listed_keys)
    assert listed_keys[0]["id"] == key["id"]  # newest first
    user = {"Authorization": f"Bearer {key['key']}"}
    ok = await console.anyone.post("/v1/chat/completions", json=CHAT, headers=user)
    assert ok.status_code == 200
    # An inference key is not an admin key.
    assert (await console.anyone.get("/admin/keys", headers=user)).status_code == 403
    revoked = await console.admin.post(f"/admin/keys/{key['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = await console.anyone.post("/v1/chat/completions", json=CHAT, headers=user)
    assert refused.status_code == 401
    assert (await console.admin.post("/admin/keys/000000000000/revoke")).status_code == 404
    bad = await console.admin.post("/admin/keys", json={"scope": "root"})
    assert bad.status_code in (400, 422)
    assert (await console.admin.post("/admin/keys", json={"tpm": 0})).status_code in (400, 422)


async def test_one_request_record_by_its_id(console: Console) -> None:
    console.records.insert_many(
        [
            RequestRecord(
                request_id="req-1",
                received_at=datetime.now(UTC),
                endpoint="chat",
                model="fake",
                version=None,
                client_ip="127.0.0.1",
                api_key_id=None,
                params={"max_tokens": 3},
                prompt=None,
                status="ok",
                http_status=200,
                queue_time_ms=1.0,
                ttft_ms=2.0,
                latency_ms=3.0,
                prompt_tokens=1,
                completion_tokens=3,
                error=None,
            )
        ]
    )
    page = (await console.admin.get("/admin/requests")).json()
    record_id = page["data"][0]["id"]
    one = await console.admin.get(f"/admin/requests/{record_id}")
    assert one.status_code == 200 and one.json() == page["data"][0]
    missing = await console.admin.get(f"/admin/requests/{record_id + 1}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "request_record_not_found"
    assert (await console.admin.get("/admin/requests/x")).status_code in (400, 422)
    assert (await console.anyone.get(f"/admin/requests/{record_id}")).status_code == 401
