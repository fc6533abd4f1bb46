"""What the Kubernetes manifests ask of a running gateway, asked of the app itself (in-process,
a fake engine): the probes' paths answer as the probes expect, without a key, on a server bound
to every interface with keys in use; /metrics, scraped as Prometheus would, carries the series
that the prometheus-adapter rules turn into the HPA's metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lmaas.config import Limits, ModelConfig, Settings
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.keys import KeyStore
from tests.fakes import FakeEngine

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def probes() -> dict[str, str]:
    """Probe kind -> path, the same for the Deployment and the Ray head (checked offline in
    tests/unit/test_deploy_manifests.py)."""
    (deployment,) = documents(DEPLOY / "kubernetes" / "deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {
        kind: container[kind]["httpGet"]["path"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }


def hpa_metrics() -> list[str]:
    (hpa,) = documents(DEPLOY / "kubernetes" / "hpa.yaml")
    return [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]


@pytest.fixture
async def client(keys: KeyStore, engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    keys.create("admin", "ops")  # as on a cluster: a key exists, the server binds 0.0.0.0
    settings = Settings(
        host="0.0.0.0", models=[ModelConfig(name="fake", path="/fake.gguf")], limits=Limits()
    )
    auth = Authenticator(keys, bind_host="0.0.0.0")
    app = create_app(settings, {"fake": engine}, auth=auth)
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
    await app.state.chat_serving.close()


async def test_probe_paths_answer_without_a_key(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    paths = probes()
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        response = await client.get(paths[kind])
        assert response.status_code == 200, (kind, response.text)
    # readiness follows the models: a pod whose model is not ready leaves the Service
    engine.ready = False
    assert (await client.get(paths["readinessProbe"])).status_code == 503
    assert (await client.get(paths["livenessProbe"])).status_code == 200


async def test_metrics_scrape_carries_the_hpa_series(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    samples = {
        line.split("{")[0].split(" ")[0]
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    for metric in hpa_metrics():
        assert metric in samples, f"{metric} is not in a /metrics scrape"
        line = next(x for x in response.text.splitlines() if x.startswith(metric + "{"))
        assert 'model="fake"' in line
