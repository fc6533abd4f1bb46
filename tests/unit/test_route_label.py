"""The metrics' endpoint label: a route's template, or ``other``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from lmaas.gateway.middleware import route_label


def app_with_labels() -> tuple[FastAPI, dict[str, str]]:
    labels: dict[str, str] = {}
    app = FastAPI()

    @app.post("/v1/files/{file_id}/content")
    def content(file_id: str) -> dict[str, Any]:
        return {}

    class Spy:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await self.inner(scope, receive, send)
            if scope["type"] == "http":
                labels[f"{scope['method']} {scope['path']}"] = route_label(scope)

    app.add_middleware(Spy)
    return app, labels


def test_a_route_with_parameters_is_labelled_by_its_template() -> None:
    app, labels = app_with_labels()
    client = TestClient(app)
    assert client.post("/v1/files/file-abc/content").status_code == 200
    assert client.get("/v1/files/file-xyz/content").status_code == 405
    assert client.post("/v1/files/file-abc/other").status_code == 404
    assert labels == {
        "POST /v1/files/file-abc/content": "/v1/files/{file_id}/content",
        "GET /v1/files/file-xyz/content": "/v1/files/{file_id}/content",
        "POST /v1/files/file-abc/other": "other",
    }


def test_a_scope_that_was_never_routed_is_matched_against_the_app() -> None:
    app, _ = app_with_labels()
    scope = {"type": "http", "method": "POST", "path": "/v1/files/f1/content", "app": app}
    assert route_label(scope) == "/v1/files/{file_id}/content"
    assert route_label({**scope, "path": "/v1/anything"}) == "other"
    assert route_label({"type": "http", "method": "POST", "path": "/x"}) == "other"
