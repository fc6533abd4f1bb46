"""The operator console in a real browser (Debian's chromium driven by Playwright) against a
real server: log in with the keyboard, the overview's charts filled by real requests (and
still there after a reload), a GGUF uploaded and listed, a served version's delete refused
with the server's reason, a deployment scaled up and back, a request record found by filter
and opened, a streamed chat in the playground, a fine-tuning job's loss curve growing and the
job cancelled, a key created and revoked, the narrow layout. Throughout: no JavaScript error
and no request to any other origin. Screenshots of each page go to build/ui-screenshots (or
$LMAAS_UI_SCREENSHOTS), never committed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.admin import new_key
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(
    os.environ.get("LMAAS_UI_SCREENSHOTS", Path(__file__).parents[2] / "build" / "ui-screenshots")
)
WAIT_MS = 60_000


def _playwright() -> Any:
    """Playwright's sync API with Debian's chromium; without them the console cannot be
    tested: a skip on a developer's machine, a failure in CI."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the dev extra pins it
        missing = "playwright is not installed (pip install -e '.[dev]')"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    return sync_playwright


@dataclass
class Console:
    server: ServerProcess
    admin: str
    page: Any
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin}", **kw.pop("headers", {})}
        return httpx.request(method, self.server.url + path, headers=headers, timeout=120, **kw)

    def go(self, fragment: str) -> None:
        """Open a page of the console, logging in first when the tab has no key yet (a test
        run alone; the first test logs in through the form)."""
        self.page.goto(f"{self.server.url}/ui#/{fragment}")
        self.page.locator("nav.nav, #admin-key").first.wait_for()
        if self.page.locator("#admin-key").count():
            self.page.locator("#admin-key").fill(self.admin)
            self.page.keyboard.press("Enter")
            self.page.locator("nav.nav").wait_for()

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    sync_playwright = _playwright()
    home = Path(tmp_path_factory.mktemp("console-home"))
    admin = new_key(home, "admin")
    env = {"LMAAS_METRICS__HISTORY_INTERVAL_S": "1", "LMAAS_JOBS__LEASE_SECONDS": "10"}
    server = ServerProcess(home, env=env)
    try:
        server.wait_ready()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM))
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            c = Console(server, admin, page)
            _watch(c, context, page)
            yield c
            browser.close()
    finally:
        server.stop()


def _watch(c: Console, context: Any, page: Any) -> None:
    origin = c.server.url

    def on_request(request: Any) -> None:
        url = request.url
        if not (url.startswith(origin + "/") or url.startswith(("data:", "blob:"))):
            c.foreign.append(url)

    def on_console(msg: Any) -> None:
        # The browser also logs every non-2xx answer ("Failed to load resource"); the refusals
        # the tests provoke are expected, and no JavaScript error.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            c.errors.append(msg.text)

    def on_response(response: Any) -> None:
        if response.url.endswith("/v1/chat/completions"):
            c.streams.append(response.headers.get("content-type", ""))

    context.on("request", on_request)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: c.errors.append(str(exc)))
    page.on("response", on_response)


@pytest.fixture(autouse=True)
def clean_browser(console: Console) -> Iterator[None]:
    yield
    assert console.errors == [], console.errors
    assert console.foreign == [], console.foreign


def _chart_points(c: Console, title: str) -> int:
    return int(c.page.locator(f'figure[data-chart="{title}"]').get_attribute("data-points") or 0)


def _wait_points(c: Console, title: str, above: int, timeout_ms: int = WAIT_MS) -> int:
    c.page.wait_for_function(
        '([t, n]) => Number(document.querySelector(`figure[data-chart="${t}"]`)'
        "?.dataset.points || 0) > n",
        arg=[title, above],
        timeout=timeout_ms,
    )
    return _chart_points(c, title)


def test_login_and_the_overview_charts_fill_with_real_requests(console: Console) -> None:
    page = console.page
    page.goto(console.server.url + "/")
    assert page.url == console.server.url + "/ui"
    page.locator("#admin-key").fill("lmaas-000000000000-wrong")
    page.keyboard.press("Enter")
    page.get_by_role("alert").filter(has_text="does not accept this key").wait_for()
    page.locator("#admin-key").fill("")
    page.locator("#admin-key").focus()
    page.keyboard.type(console.admin)
    page.keyboard.press("Enter")  # the keyboard alone logs in
    page.get_by_role("heading", name="Overview").wait_for()
    assert console.admin not in page.url
    assert page.evaluate("sessionStorage.getItem('lmaas.adminKey')") == console.admin
    for i in range(4):
        r = console.api(
            "POST",
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            headers={"X-Request-Id": f"console-e2e-{i}"},
        )
        assert r.status_code == 200, r.text
    for title in ("Requests/s by status", "Tokens/s", "Time to first token"):
        _wait_points(console, title, 0)
    assert page.locator('figure[data-chart="Tokens/s"] canvas').count() == 1
    page.get_by_label("Model").select_option(MODEL)
    _wait_points(console, "End-to-end latency", 0)
    page.locator("text=Replicas").first.wait_for()
    page.locator(f".replica-list >> text={MODEL}").wait_for()
    console.shot("overview")
    page.reload()  # the history is the server's: it is all there again at once
    page.get_by_role("heading", name="Overview").wait_for()
    _wait_points(console, "Requests/s by status", 0)


def _tiny_gguf(path: Path) -> Path:
    import gguf  # the package llama.cpp's own scripts use; a dependency of lmaas

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.zeros((256, 1024), dtype=np.float32))  # 1 MiB
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_models_upload_a_gguf_and_a_refused_delete(console: Console, tmp_path: Path) -> None:
    page = console.page
    console.go("models")
    page.get_by_role("link", name=MODEL).wait_for()
    page.locator('input[type="file"]').set_input_files(str(_tiny_gguf(tmp_path / "tiny.gguf")))
    page.get_by_label("Model name").fill("tiny-console")
    page.get_by_role("button", name="Upload", exact=True).click()
    page.get_by_role("status").filter(has_text="Uploaded tiny-console version 1").wait_for()
    page.get_by_role("link", name="tiny-console").wait_for()
    assert console.api("GET", "/admin/models/tiny-console").json()["latest"] == 1
    page.get_by_role("heading", name="tiny-console").wait_for()  # its detail opened
    console.shot("models")
    console.go(f"models/{MODEL}")
    row = page.locator("tbody tr", has_text="(latest)").first  # v1, served
    row.get_by_role("button", name="Delete").click()
    row.get_by_role("button", name="Yes").click()
    page.get_by_role("alert").filter(has_text="is being served").wait_for()


def _deployment(console: Console) -> dict[str, Any]:
    return console.api("GET", f"/admin/deployments/{MODEL}").json()  # type: ignore[no-any-return]


@pytest.mark.timeout(600)
def test_deployments_scale_up_and_back(console: Console) -> None:
    page = console.page
    console.go("deployments")
    card = page.locator(f'article[data-deployment="{MODEL}"]')
    card.get_by_test_id("ready-count").filter(has_text="1/1 ready").wait_for()
    card.get_by_label(f"Replicas of {MODEL}").fill("2")
    card.get_by_role("button", name="Scale").click()
    card.get_by_test_id("ready-count").filter(has_text="2/2 ready").wait_for(timeout=180_000)
    assert [r["state"] for r in _deployment(console)["replica_status"]] == ["ready", "ready"]
    assert card.locator('tr[data-replica-state="ready"]').count() == 2
    console.shot("deployments")
    card.get_by_label(f"Replicas of {MODEL}").fill("1")
    card.get_by_role("button", name="Scale").click()
    card.get_by_test_id("ready-count").filter(has_text="1/1 ready").wait_for(timeout=120_000)
    assert _deployment(console)["replicas"] == 1


def test_requests_filtered_and_one_opened(console: Console) -> None:
    page = console.page
    console.go("requests")
    filters = page.get_by_role("form", name="Filters")
    filters.get_by_label("Model").fill(MODEL)
    filters.get_by_label("Status").select_option("error")
    filters.get_by_role("button", name="Filter").click()
    page.get_by_text("No request matches.").wait_for()
    filters.get_by_label("Status").select_option("ok")
    filters.get_by_role("button", name="Filter").click()
    row = page.locator('tr[data-request-id="console-e2e-2"]')
    row.wait_for()
    console.shot("requests")
    row.get_by_role("link").click()
    page.get_by_role("heading", name="Request console-e2e-2").wait_for()
    assert "max_tokens" in page.locator("pre.json").first.inner_text()
    console.shot("request")


def test_playground_streams_a_chat_with_its_timings(console: Console) -> None:
    page = console.page
    console.go("playground")
    params = page.locator("fieldset.params")
    params.get_by_label("temperature").fill("0")
    params.get_by_label("max_tokens").fill("8")
    page.locator("#chat-input").fill("Say hello.")
    page.locator("#chat-input").press("Control+Enter")
    stats = page.locator(".turn.assistant .stats")
    stats.filter(has_text="TTFT").wait_for()
    assert "tokens/s" in stats.inner_text()
    assert page.locator(".turn.assistant .content").inner_text().strip()
    assert any(t.startswith("text/event-stream") for t in console.streams), console.streams
    # Beam search (not streamed): the beams returned, best first.
    page.get_by_label("Beam search").check()
    params.get_by_label("beam_width").fill("2")
    params.get_by_label("n (beams returned)").fill("2")
    params.get_by_label("max_tokens").fill("4")
    page.locator("#chat-input").fill("Name a colour.")
    page.get_by_role("button", name="Send").click()
    stats.filter(has_text="beam search, 2 of width 2").wait_for()
    assert page.locator(".turn.assistant").last.locator(".beams li").count() == 2
    # JSON-schema output: the answer parses and follows the schema.
    page.get_by_label("Beam search").uncheck()
    page.get_by_label("JSON-schema output").check()
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    params.get_by_label("Schema", exact=True).fill(json.dumps(schema))
    params.get_by_label("max_tokens").fill("24")
    page.locator("#chat-input").fill("Are you ok? Answer in JSON.")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".turn.assistant").last
    answer.locator(".stats", has_text="TTFT").wait_for()
    assert isinstance(json.loads(answer.locator(".content").inner_text())["ok"], bool)
    page.get_by_role("button", name="Compare").click()  # the embeddings similarity check
    page.get_by_role("table").filter(has_text="Cosine similarity").wait_for()
    console.shot("playground")


@pytest.mark.timeout(900)
def test_a_fine_tuning_loss_curve_grows_and_the_job_is_cancelled(console: Console) -> None:
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": "Ahoy!"},
            ]
        }
        for i in range(8)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    f = console.api(
        "POST", "/v1/files", files={"file": ("t.jsonl", data)}, data={"purpose": "fine-tune"}
    )
    assert f.status_code == 200, f.text
    job = console.api(
        "POST",
        "/v1/fine_tuning/jobs",
        json={
            "model": MODEL,
            "training_file": f.json()["id"],
            "hyperparameters": {"n_epochs": 10, "batch_size": 1},
        },
    )
    assert job.status_code == 200, job.text
    page = console.page
    console.go("jobs")
    page.get_by_role("link", name=job.json()["id"]).click()
    # The runner loads torch and the model first (a minute or more on a busy machine).
    first = _wait_points(console, "Loss", 1, timeout_ms=400_000)
    _wait_points(console, "Loss", first, timeout_ms=120_000)  # it grows while the page is open
    console.shot("jobs")
    page.get_by_role("button", name="Cancel the job").click()
    page.get_by_role("button", name="Yes").click()
    page.locator(".card-head .badge", has_text="cancelled").wait_for(timeout=120_000)
    assert page.locator(".events li").count() > first


def test_keys_created_once_and_revoked(console: Console) -> None:
    page = console.page
    console.go("keys")
    page.get_by_label("Name").fill("console-made")
    page.get_by_role("button", name="Create").click()
    secret = page.get_by_test_id("new-key").inner_text().strip()
    assert secret.startswith("lmaas-")
    models = httpx.get(
        console.server.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}
    )
    assert models.status_code == 200
    key_id = secret.split("-")[1]
    row = page.locator(f'tr[data-key-id="{key_id}"]')
    row.get_by_role("button", name="Revoke").click()
    row.get_by_role("button", name="Yes").click()
    row.locator(".badge", has_text="revoked").wait_for()
    console.shot("keys")
    refused = httpx.get(
        console.server.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}
    )
    assert refused.status_code == 401


def test_a_narrow_screen_gets_a_menu(console: Console) -> None:
    page = console.page
    page.set_viewport_size({"width": 390, "height": 800})
    try:
        console.go("overview")
        links = page.get_by_role("link", name="Deployments")
        assert not links.is_visible()
        page.get_by_role("button", name="Menu").click()
        links.click()
        page.get_by_role("heading", name="Deployments").wait_for()
        console.shot("narrow-deployments")
    finally:
        page.set_viewport_size({"width": 1280, "height": 800})
