"""/v1/batches and /admin/jobs in process: the app on SQLite with fake engines, and the job
runner's loop in the same event loop, calling the app through the same HTTP API (an ASGI
transport) with the runner token, as the runner process does on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmaas.config import ModelConfig, Settings
from lmaas.db import create_db_engine, session_factory, upgrade_to_head, utc_now
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.jobs.batch import BatchHandler
from lmaas.jobs.gateway import GatewayClient
from lmaas.jobs.leases import Item, JobLeases
from lmaas.jobs.loop import JobLoop
from lmaas.jobs.storage import LocalJobFiles
from lmaas.jobs.store import JobStore
from lmaas.keys import KeyStore
from lmaas.protocol.engine import Priority
from lmaas.records.store import RecordStore, RecordWriter
from lmaas.store.blobs import BlobStore
from lmaas.store.catalog import Catalog
from lmaas.store.files import FileLimits, FileStore, Viewer
from lmaas.store.model_store import ModelStore
from tests.bad_inputs import expect_error as error
from tests.fakes import FakeEngine
from tests.fakes_tasks import FakeTaskEngine

TOKEN = "runner-token-for-tests"
CHAT, EMBED = "/v1/chat/completions", "/v1/embeddings"


def chat_line(custom_id: str, model: str = "fake", url: str = CHAT) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def embed_line(custom_id: str, text: str) -> dict[str, Any]:
    body = {"model": "embedder", "input": text}
    return {"custom_id": custom_id, "method": "POST", "url": EMBED, "body": body}


def jsonl(*lines: object) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


class Batches:
    """The app, its stores, a client per key, and the runner's loop (started on demand); the
    jobs' times come from ``clock``."""

    def __init__(self, tmp_path: Path, clock: Callable[[], datetime] = utc_now) -> None:
        self.db = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
        upgrade_to_head(self.db)
        sessions = session_factory(self.db)
        keys = KeyStore(sessions, cache_ttl=0)
        models = ModelStore(Catalog(sessions), BlobStore(tmp_path / "home"), max_upload_bytes=1)
        self.files = FileStore(sessions, models, FileLimits(1 << 20, 1 << 16))
        self.jobs = JobStore(sessions, clock=clock)
        self.leases = JobLeases(sessions, lease_seconds=30, max_attempts=3, clock=clock)
        self.records = RecordStore(sessions)
        self.recorder = RecordWriter(self.records, batch_size=1, flush_interval=0.05)
        self.chat = FakeEngine("fake")
        self.embedder = FakeTaskEngine("embedder", ["embed"])
        self.key_info = {}
        self.keys = {}
        for who, scope, allowed in (
            ("admin", "admin", None),
            ("alice", "inference", None),
            ("bob", "inference", None),
            ("carol", "inference", ["embedder"]),
        ):
            self.keys[who], self.key_info[who] = keys.create(scope, who, allowed)
        auth = Authenticator(keys, bind_host="127.0.0.1")
        auth.trust_runner(TOKEN)
        self.app = create_app(
            Settings(models=[ModelConfig(name="fake", path="/fake.gguf")]),
            {"fake": self.chat, "embedder": self.embedder},
            auth=auth,
            recorder=self.recorder,
            file_store=self.files,
            job_store=self.jobs,
        )
        self.keystore = keys
        self.transport = httpx.ASGITransport(app=self.app)
        self.as_ = {
            who: httpx.AsyncClient(
                transport=self.transport,
                base_url="http://test",
                headers={"Authorization": f"Bearer {key}"},
            )
            for who, key in self.keys.items()
        }
        self.runner_http = httpx.AsyncClient(transport=self.transport, base_url="http://test")
        self._stop = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    def start_runner(self, *, runner: str = "runner-1", line_concurrency: int = 4) -> None:
        handler = BatchHandler(
            GatewayClient(self.runner_http, TOKEN),
            LocalJobFiles(self.files),
            line_concurrency=line_concurrency,
        )
        loop = JobLoop(
            self.leases,
            {"batch": handler},
            runner=runner,
            max_concurrent=1,
            heartbeat_interval=0.05,
            poll_interval=0.05,
        )
        self._stop = asyncio.Event()
        self._loop = asyncio.create_task(loop.run(self._stop))

    async def stop_runner(self) -> None:
        self._stop.set()
        if self._loop is not None:
            await asyncio.wait_for(self._loop, 10)

    async def upload(self, who: str, data: bytes, purpose: str = "batch") -> str:
        r = await self.as_[who].post(
            "/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": purpose}
        )
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    async def create(
        self, who: str, file_id: str, endpoint: str = CHAT, window: str = "24h"
    ) -> httpx.Response:
        body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": window}
        return await self.as_[who].post("/v1/batches", json=body)

    async def wait(
        self, who: str, batch_id: str, done: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        for _ in range(1000):
            batch = (await self.as_[who].get(f"/v1/batches/{batch_id}")).json()
            if done(batch):
                return batch
            await asyncio.sleep(0.01)
        raise AssertionError(f"batch never got there: {batch}")

    async def content(self, who: str, file_id: str) -> list[dict[str, Any]]:
        r = await self.as_[who].get(f"/v1/files/{file_id}/content")
        assert r.status_code == 200, r.text
        return lines_of(r.content)

    async def close(self) -> None:
        await self.stop_runner()
        for client in (*self.as_.values(), self.runner_http):
            await client.aclose()
        await self.app.state.chat_serving.close()
        await self.recorder.close()
        self.db.dispose()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Batches]:
    batches = Batches(tmp_path)
    batches.recorder.start()
    yield batches
    await batches.close()


def finished(batch: dict[str, Any]) -> bool:
    return batch["status"] in ("completed", "failed", "cancelled", "expired")


async def test_a_chat_batch_runs_every_line_once_as_its_owner(api: Batches) -> None:
    file_id = await api.upload("alice", jsonl(*(chat_line(f"req-{i}") for i in range(5))))
    r = await api.create("alice", file_id)
    assert r.status_code == 200, r.text
    batch = r.json()
    assert batch["status"] == "validating" and batch["object"] == "batch"
    assert batch["request_counts"] == {"total": 5, "completed": 0, "failed": 0}
    assert (batch["model"], batch["expires_at"] - batch["created_at"]) == ("fake", 86400)
    error(await api.as_["alice"].delete(f"/v1/files/{file_id}"), 409, "file_id", "file_in_use")

    api.start_runner()
    done = await api.wait("alice", batch["id"], finished)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert done["error_file_id"] is None and done["usage"]["output_tokens"] == 15
    assert done["in_progress_at"] and done["finalizing_at"] and done["completed_at"]
    output = await api.content("alice", done["output_file_id"])
    assert [line["custom_id"] for line in output] == [f"req-{i}" for i in range(5)]
    for i, line in enumerate(output):
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["request_id"] == f"{batch['id']}-{i + 1}"
        assert line["response"]["body"]["choices"][0]["message"]["content"] == " w0 w1 w2"
    assert {r.priority for r in api.chat.requests} == {Priority.BATCH}
    output_file = (await api.as_["alice"].get(f"/v1/files/{done['output_file_id']}")).json()
    assert output_file["purpose"] == "batch_output"
    assert (await api.as_["alice"].delete(f"/v1/files/{file_id}")).status_code == 200

    await api.recorder.flush()
    records, _ = api.records.query(api_key_id=api.key_info["alice"].id)
    ids = sorted(r.request_id for r in records)
    assert ids == sorted(f"{batch['id']}-{i}" for i in range(1, 6))


async def test_lines_that_fail_go_to_the_error_file_and_the_batch_completes(
    api: Batches,
) -> None:
    data = jsonl(chat_line("good"), chat_line("nomodel", model="nope"), chat_line("good-2"))
    batch = (await api.create("alice", await api.upload("alice", data))).json()
    api.start_runner()
    done = await api.wait("alice", batch["id"], finished)
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    errors = await api.content("alice", done["error_file_id"])
    assert [e["custom_id"] for e in errors] == ["nomodel"]
    assert errors[0]["response"]["status_code"] == 404
    assert errors[0]["error"]["code"] == "model_not_found"
    output = await api.content("alice", done["output_file_id"])
    assert [line["custom_id"] for line in output] == ["good", "good-2"]


async def test_an_embeddings_batch_and_a_key_limited_to_some_models(api: Batches) -> None:
    data = jsonl(embed_line("e1", "one two"), embed_line("e2", "three"))
    batch = (await api.create("carol", await api.upload("carol", data), EMBED)).json()
    chat = (await api.create("carol", await api.upload("carol", jsonl(chat_line("c"))))).json()
    api.start_runner()
    done = await api.wait("carol", batch["id"], finished)
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 2
    output = await api.content("carol", done["output_file_id"])
    vectors = [line["response"]["body"]["data"][0]["embedding"] for line in output]
    assert [line["custom_id"] for line in output] == ["e1", "e2"]
    assert all(len(v) == 8 for v in vectors)
    refused = await api.wait("carol", chat["id"], finished)  # carol may not use `fake`
    assert refused["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    errors = await api.content("carol", refused["error_file_id"])
    assert errors[0]["response"]["status_code"] == 403


async def test_a_resumed_batch_runs_only_the_lines_not_done(api: Batches) -> None:
    data = jsonl(*(chat_line(c) for c in "abcd"))
    batch = (await api.create("alice", await api.upload("alice", data))).json()
    claimed = api.leases.claim("dead-runner")
    assert claimed is not None and claimed.id == batch["id"]
    earlier = [Item("a", 1, True, '{"custom_id":"a"}'), Item("c", 3, True, '{"custom_id":"c"}')]
    assert api.leases.record(batch["id"], "dead-runner", earlier, eta_at=None)
    api.leases.release_runner("dead-runner")
    api.start_runner()
    done = await api.wait("alice", batch["id"], finished)
    assert done["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    output = await api.content("alice", done["output_file_id"])
    assert [line["custom_id"] for line in output] == ["a", "b", "c", "d"]
    assert len(api.chat.requests) == 2  # b and d only
    events = (await api.as_["admin"].get(f"/admin/jobs/{batch['id']}/events")).json()
    messages = [e["message"] for e in events["data"]]
    assert "running 2 of 4 lines (2 were done by an earlier attempt)" in messages


async def test_cancel_stops_a_running_batch_and_aborts_its_lines(api: Batches) -> None:
    api.chat.hold = asyncio.Event()  # every line waits in the engine
    data = jsonl(*(chat_line(f"r{i}") for i in range(8)))
    batch = (await api.create("alice", await api.upload("alice", data))).json()
    api.start_runner(line_concurrency=3)
    for _ in range(1000):
        if len(api.chat.requests) == 3:
            break
        await asyncio.sleep(0.01)
    assert len(api.chat.requests) == 3  # no more than line_concurrency in flight
    r = await api.as_["alice"].post(f"/v1/batches/{batch['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelling"
    assert r.json()["cancelling_at"] is not None
    done = await api.wait("alice", batch["id"], finished)
    assert done["status"] == "cancelled" and done["cancelled_at"] is not None
    assert done["request_counts"] == {"total": 8, "completed": 0, "failed": 0}
    assert done["output_file_id"] is None and len(api.chat.requests) == 3
    assert len(api.chat.aborted) == 3  # the lines in flight were ended in the engine
    again = await api.as_["alice"].post(f"/v1/batches/{batch['id']}/cancel")
    error(again, 409, "batch_id", "job_finished")


async def test_a_queued_batch_is_cancelled_at_once(api: Batches) -> None:
    batch = (await api.create("alice", await api.upload("alice", jsonl(chat_line("a"))))).json()
    r = await api.as_["alice"].post(f"/v1/batches/{batch['id']}/cancel")
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["in_progress_at"]) == ("cancelled", None)


async def test_bad_requests_name_the_field_and_queue_nothing(api: Batches) -> None:
    alice = api.as_["alice"]
    chat_file = await api.upload("alice", jsonl(chat_line("a"), chat_line("b", url=EMBED)))
    data_file = await api.upload("alice", b"hello", purpose="user_data")
    bobs = await api.upload("bob", jsonl(chat_line("a")))
    error(await api.create("alice", "file-" + "0" * 24), 404, "input_file_id", "file_not_found")
    error(await api.create("alice", bobs), 404, "input_file_id", "file_not_found")
    error(await api.create("alice", data_file), 400, "input_file_id", "invalid_file_purpose")
    message = error(await api.create("alice", chat_file), 400, "endpoint", "endpoint_mismatch")
    assert "line 2" in message
    error(
        await api.create("alice", bobs, "/v1/images/generations"),
        400,
        "endpoint",
        "unsupported_endpoint",
    )
    for window in ("25h", "2d", "0h", "24 h", "1w", "-1h", "h", 24):  # 24h at most by default
        body = {"input_file_id": bobs, "endpoint": CHAT, "completion_window": window}
        error(await alice.post("/v1/batches", json=body), 400, "completion_window")
    body = {
        "input_file_id": bobs,
        "endpoint": CHAT,
        "completion_window": "24h",
        "metadata": {"k": 1},
    }
    error(await alice.post("/v1/batches", json=body), 400, "metadata")
    error(await alice.post("/v1/batches", json={"endpoint": CHAT}), 400, "input_file_id")
    error(await alice.get("/v1/batches/batch_nope"), 404, "batch_id", "batch_not_found")
    assert (await alice.get("/v1/batches")).json()["data"] == []
    assert api.jobs.list(Viewer(None, admin=True)).jobs == []


async def test_owners_see_their_own_batches_in_pages(api: Batches) -> None:
    file_id = await api.upload("alice", jsonl(chat_line("a")))
    ids = [(await api.create("alice", file_id)).json()["id"] for _ in range(3)]
    page = (await api.as_["alice"].get("/v1/batches", params={"limit": 2})).json()
    assert [b["id"] for b in page["data"]] == ids[:0:-1] and page["has_more"]
    rest = (await api.as_["alice"].get("/v1/batches", params={"after": page["last_id"]})).json()
    assert [b["id"] for b in rest["data"]] == ids[:1] and not rest["has_more"]
    assert (await api.as_["bob"].get("/v1/batches")).json()["data"] == []
    error(await api.as_["bob"].get(f"/v1/batches/{ids[0]}"), 404, "batch_id")
    error(await api.as_["bob"].post(f"/v1/batches/{ids[0]}/cancel"), 404, "batch_id")


async def test_the_admin_jobs_api_lists_shows_logs_and_cancels(api: Batches) -> None:
    file_id = await api.upload("alice", jsonl(chat_line("a"), chat_line("b")))
    first = (await api.create("alice", file_id)).json()["id"]
    second = (await api.create("alice", file_id)).json()["id"]
    admin = api.as_["admin"]
    listed = (await admin.get("/admin/jobs", params={"status": "queued"})).json()
    assert [j["id"] for j in listed["data"]] == [second, first]
    job = (await admin.get(f"/admin/jobs/{first}")).json()
    assert (job["kind"], job["owner_key_id"], job["status"]) == (
        "batch",
        api.key_info["alice"].id,
        "queued",
    )
    assert job["progress"] == {"total": 2, "done": 0, "failed": 0, "eta_seconds": None}
    assert (await admin.post(f"/admin/jobs/{second}/cancel")).json()["status"] == "cancelled"
    api.start_runner()
    await api.wait("alice", first, finished)
    job = (await admin.get(f"/admin/jobs/{first}")).json()
    assert job["status"] == "completed" and job["progress"]["done"] == 2
    assert job["attempts"] == 1 and job["lease"]["owner"] == "runner-1"
    assert job["duration_seconds"] is not None and job["result"]["output_file_id"]
    events = (await admin.get(f"/admin/jobs/{first}/events", params={"limit": 2})).json()
    assert [e["seq"] for e in events["data"]] == [1, 2] and events["has_more"]
    rest = (await admin.get(f"/admin/jobs/{first}/events", params={"after": 2})).json()
    assert rest["data"][-1]["message"].startswith("completed;")
    progress = [e for e in rest["data"] if e["metrics"]]
    assert progress and progress[-1]["metrics"]["done"] == 2
    error(await admin.get("/admin/jobs", params={"status": "lost"}), 400, "status")
    error(await api.as_["alice"].get("/admin/jobs"), 403, None)
    error(await admin.get("/admin/jobs/job_nope"), 404, "job_id", "job_not_found")


async def test_the_runner_token_counts_only_from_this_machine(api: Batches) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Lmaas-Job-Owner": api.key_info["bob"].id}
    r = await api.runner_http.post(CHAT, json=body, headers=headers)
    assert r.status_code == 200, r.text
    remote = httpx.ASGITransport(app=api.app, client=("203.0.113.9", 4000))
    async with httpx.AsyncClient(transport=remote, base_url="http://test") as outsider:
        error(await outsider.post(CHAT, json=body, headers=headers), 401, None)
    api.keystore.revoke(api.key_info["bob"].id)
    api.app.state.auth._owners.clear()  # the cache would keep it for a few seconds
    r = await api.runner_http.post(CHAT, json=body, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "api_key_revoked"
