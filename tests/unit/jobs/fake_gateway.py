"""A stand-in for the gateway's internal routes as a runner on another node sees them."""

from __future__ import annotations

import httpx

from lmaas.store.files import Viewer

# A runner's secret and another runner's, the runners they name, the gateway's test URL, and
# an admin viewer of the file store: what the tests of runners on other nodes share.
SECRET, OTHER = "runner-s3cret", "other-s3cret"
RUNNERS = {SECRET: "r1", OTHER: "r2"}
URL = "http://testserver"
ADMIN = Viewer(None, admin=True)


class FakeBlobGateway:
    """``GET /internal/blobs/<hex>`` for the runner's ``secret`` (the blobs asked for are
    counted in ``fetches``); other requests go to ``route``, 404 unless a subclass answers."""

    def __init__(self, blobs: dict[str, bytes], secret: str) -> None:
        self.blobs = blobs
        self.secret = secret
        self.fetches: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {self.secret}":
            return httpx.Response(401)
        if request.method == "GET" and request.url.path.startswith("/internal/blobs/"):
            hexdigest = request.url.path.rsplit("/", 1)[-1]
            self.fetches.append(hexdigest)
            data = self.blobs.get(hexdigest)
            return httpx.Response(200, content=data) if data is not None else httpx.Response(404)
        return self.route(request)

    def route(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(404)
