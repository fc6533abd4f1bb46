"""Job runners on a Ray cluster without a cluster: the storage seam (input blobs fetched by
digest into a node cache and checked, outputs sent to the gateway) against a fake gateway, the
gateway's internal routes for runner actors with fakes behind them, the runner secret on the
OpenAI endpoints from another address, and the supervision of runner actors over a fake Ray
(a dead actor is replaced, told the dead runner's id, and its secret stops working). The real
cluster is in ``tests/e2e/test_ray_jobs.py``."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from lmaas.config import Settings
from lmaas.errors import (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
)
from lmaas.gateway.auth import Authenticator
from lmaas.gateway.errors import install_error_handlers
from lmaas.gateway.routes import internal
from lmaas.gateway.runner_access import RunnerAccess
from lmaas.jobs.kinds import JOB_KINDS, job_handlers
from lmaas.jobs.ray_runners import RayRunners, ray_runners, runner_groups
from lmaas.jobs.runner import RunnerConfig
from lmaas.jobs.storage import FILES_ROUTE, GatewayJobFiles, LocalJobFiles, OutputRefused
from lmaas.local_admin import LOCAL_ADMIN
from lmaas.store.blobs import BlobStore
from lmaas.store.node_cache import BlobFetchError, NodeCache, Source
from tests.unit.jobs.fake_gateway import OTHER, SECRET, FakeBlobGateway

PG = "postgresql://lmaas@db.internal/lmaas"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- the storage seam -----------------------------------------------------------------------------


class FakeGateway(FakeBlobGateway):
    """The gateway's blob route and output route, counting what it is asked."""

    def __init__(self, blobs: dict[str, bytes], *, upload_status: int = 201) -> None:
        super().__init__(blobs, SECRET)
        self.uploads: list[tuple[dict[str, str], str, bytes]] = []
        self.upload_status = upload_status

    def route(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == FILES_ROUTE:
            params = dict(request.url.params)
            self.uploads.append((params, request.headers["content-type"], request.read()))
            return httpx.Response(self.upload_status, json={"id": "file-0123456789abcdef01234567"})
        return httpx.Response(404)


def gateway_files(
    tmp_path: Path, gateway: FakeGateway, files: dict[str, tuple[str, int]]
) -> GatewayJobFiles:
    client = httpx.Client(transport=httpx.MockTransport(gateway.handle))
    return GatewayJobFiles(
        files.get, NodeCache(tmp_path / "node"), Source("http://gw:8000", SECRET), client=client
    )


def test_an_input_file_is_fetched_by_digest_once_into_the_node_cache(tmp_path: Path) -> None:
    data = b'{"custom_id": "a"}\n' * 50
    gateway = FakeGateway({sha(data)[7:]: data})
    files = gateway_files(tmp_path, gateway, {"file-1": (sha(data), len(data))})
    for _ in range(2):
        with files.open_input("file-1") as handle:
            assert handle.read() == data
    assert gateway.fetches == [sha(data)[7:]]  # the second read is the cached blob
    assert (tmp_path / "node" / "blobs" / f"sha256-{sha(data)[7:]}").read_bytes() == data


def test_an_input_whose_bytes_are_not_its_digest_is_refused_and_not_kept(tmp_path: Path) -> None:
    claimed, served = b"the real file", b"something else"
    gateway = FakeGateway({sha(claimed)[7:]: served})
    files = gateway_files(tmp_path, gateway, {"file-1": (sha(claimed), len(served))})
    with pytest.raises(BlobFetchError, match="discarded"):
        files.open_input("file-1")
    assert list((tmp_path / "node" / "blobs").glob("sha256-*")) == []
    with pytest.raises(Exception, match="no file"):
        files.open_input("file-unknown")


def test_an_output_file_is_streamed_to_the_gateway_with_the_runner_s_secret(
    tmp_path: Path,
) -> None:
    gateway = FakeGateway({})
    files = gateway_files(tmp_path, gateway, {})
    chunks = [b'{"a": 1}\n', b"", b'{"b": 2}\n']
    file_id = files.add_output(
        iter(chunks),
        job_id="batch_1",
        purpose="batch_output",
        filename="b_output.jsonl",
        owner_key_id="key123",
    )
    assert file_id == "file-0123456789abcdef01234567"
    ((params, content_type, body),) = gateway.uploads
    # The job is named, not its owner: the gateway takes the owner from the job.
    assert params == {"job": "batch_1", "purpose": "batch_output", "filename": "b_output.jsonl"}
    assert (content_type, body) == ("application/octet-stream", b"".join(chunks))

    refusing = gateway_files(tmp_path, FakeGateway({}, upload_status=401), {})
    with pytest.raises(OutputRefused, match="401"):
        refusing.add_output(
            [b"x"], job_id="batch_1", purpose="batch_output", filename="f", owner_key_id=None
        )


class FakeFileStore:
    def __init__(self) -> None:
        self.added: list[tuple[bytes, dict[str, Any]]] = []
        self.limits = SimpleNamespace(max_bytes=64 * 1024)

    def open(self, file_id: str, viewer: Any) -> tuple[Any, BinaryIO]:
        assert viewer.admin  # a job reads its owner's file whoever asks
        return SimpleNamespace(id=file_id), io.BytesIO(f"bytes of {file_id}".encode())

    def add(self, chunks: Iterable[bytes], **fields: Any) -> Any:
        data = b""
        for chunk in chunks:
            data += chunk
            if len(data) > fields.get("max_bytes", 1 << 62):
                raise RequestTooLargeError("too large")
        self.added.append((data, fields))
        return SimpleNamespace(id="file-new")


def test_local_job_files_are_the_store() -> None:
    store = FakeFileStore()
    files = LocalJobFiles(store)  # type: ignore[arg-type]
    assert files.open_input("file-9").read() == b"bytes of file-9"
    out = files.add_output(
        [b"a", b"b"], job_id="batch_1", purpose="batch_output", filename="o", owner_key_id=None
    )
    assert out == "file-new"
    assert store.added == [
        (b"ab", {"purpose": "batch_output", "filename": "o", "owner_key_id": None})
    ]


def test_every_kind_is_listed_and_a_runner_builds_the_kinds_it_is_given() -> None:
    fake: Any = SimpleNamespace()
    settings = Settings().jobs
    where = {"catalog": fake, "workdirs": Path("/nowhere")}
    assert tuple(job_handlers(fake, fake, settings, fake, **where)) == JOB_KINDS
    assert set(job_handlers(fake, fake, settings, fake, **where, kinds=["quantize"])) == {
        "quantize"
    }


# -- the gateway's side ---------------------------------------------------------------------------


class FakeJobs:
    """Blobs read by the jobs runner-1 holds; jobs by id (held by runner-1 unless named)."""

    def __init__(self, read: set[str]) -> None:
        self.read = read
        self.asked: list[tuple[str, tuple[str, ...], str]] = []
        self.jobs = {
            "batch_1": job_like("batch_1", "batch", "key123", "runner-1"),
            "batch_2": job_like("batch_2", "batch", "key456", "runner-2"),
            "batch_q": job_like("batch_q", "batch", "key456", None),
            "batch_done": job_like("batch_done", "batch", "key123", "runner-1", finished=True),
            "qjob_1": job_like("qjob_1", "quantize", "key123", "runner-1"),
        }

    def reads_blob(self, digest: str, kinds: Iterable[str], runner: str) -> bool:
        self.asked.append((digest, tuple(kinds), runner))
        return digest in self.read and runner == "runner-1"

    def get(self, job_id: str, viewer: Any) -> Any:
        assert viewer.admin
        if job_id not in self.jobs:
            raise NotFoundError(f"no job {job_id}")
        return self.jobs[job_id]


def job_like(
    job_id: str, kind: str, owner: str, lease_owner: str | None, *, finished: bool = False
) -> Any:
    return SimpleNamespace(
        id=job_id, kind=kind, owner_key_id=owner, lease_owner=lease_owner, finished=finished
    )


class ModelBlobs:
    def __init__(self, path: Path) -> None:
        self.path = path

    def token_ok(self, token: str) -> bool:
        return token == "cluster-t0k"

    def blob_path(self, hexdigest: str) -> Path | None:
        return self.path if hexdigest == self.path.name else None


def internal_app(tmp_path: Path) -> tuple[FastAPI, FakeFileStore, str, str]:
    blobs = BlobStore(tmp_path / "store")
    job_input = blobs.write([b"a batch input"], 1 << 20).digest
    model = tmp_path / ("b" * 64)
    model.write_bytes(b"weights")
    store = FakeFileStore()
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(internal.router)
    app.state.blob_source = ModelBlobs(model)
    app.state.runner_access = RunnerAccess(
        {SECRET: "runner-1", OTHER: "runner-2"}.get,
        ("batch",),
        FakeJobs({job_input}),  # type: ignore[arg-type]
        store,  # type: ignore[arg-type]
        SimpleNamespace(blobs=blobs),  # type: ignore[arg-type]
    )
    return app, store, job_input[7:], model.name


async def test_runner_actors_get_active_inputs_and_the_cluster_its_models_only(
    tmp_path: Path,
) -> None:
    app, _, job_hex, model_hex = internal_app(tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:

        async def get(hexdigest: str, token: str) -> httpx.Response:
            return await client.get(
                f"/internal/blobs/{hexdigest}", headers={"Authorization": f"Bearer {token}"}
            )

        r = await get(job_hex, SECRET)
        assert (r.status_code, r.content) == (200, b"a batch input")
        assert (await get(model_hex, "cluster-t0k")).content == b"weights"
        # Each token gets its own blobs only, and an unknown token nothing.
        assert (await get(model_hex, SECRET)).status_code == 404
        assert (await get(job_hex, "cluster-t0k")).status_code == 404
        assert (await get(job_hex, "old-secret")).status_code == 401
        # Another runner does not get the blobs of the jobs runner-1 holds.
        assert (await get(job_hex, OTHER)).status_code == 404
        assert (await get(job_hex.upper(), SECRET)).status_code == 400


async def test_runner_actors_store_output_files_of_their_own_jobs_only(tmp_path: Path) -> None:
    app, store, _, _ = internal_app(tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:

        async def post(
            token: str = SECRET,
            purpose: str = "batch_output",
            job: str | None = "batch_1",
            body: bytes = b'{"line": 1}\n' * 1000,
            **extra: str,
        ) -> httpx.Response:
            params = {"purpose": purpose, "filename": "b_output.jsonl"} | extra
            if job is not None:
                params["job"] = job
            return await client.post(
                FILES_ROUTE,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
                content=body,
            )

        # The owner named in the query is not taken: the file is the job's owner's.
        r = await post(owner="local-admin")
        assert r.status_code == 201 and r.json() == {"id": "file-new"}
        assert (await post("cluster-t0k")).status_code == 401
        assert (await post(purpose="fine-tune")).status_code == 400
        assert (await post(job=None)).status_code == 400  # a job must be named
        # Another runner's job, a queued one, a finished one, an unknown one: 403.
        for job in ("batch_2", "batch_q", "batch_done", "batch_nope"):
            r = await post(job=job)
            assert r.status_code == 403, (job, r.text)
            assert r.json()["error"]["type"] == "permission_error"
        assert (await post(job="qjob_1")).status_code == 403  # a kind these actors do not run
        # Past files.max_bytes (64 KiB here): 413, announced or streamed, and nothing kept.
        r = await post(body=b"x" * (64 * 1024 + 1))
        assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"

        async def endless() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b"y" * 4096

        r = await client.post(
            FILES_ROUTE,
            params={"job": "batch_1", "purpose": "batch_output", "filename": "o.jsonl"},
            headers={"Authorization": f"Bearer {SECRET}"},
            content=endless(),
        )
        assert r.status_code == 413, r.text
    fields = {
        "purpose": "batch_output",
        "filename": "b_output.jsonl",
        "owner_key_id": "key123",
        "max_bytes": 64 * 1024,
    }
    assert store.added == [(b'{"line": 1}\n' * 1000, fields)]


def request_from(host: str, token: str) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    scope = {"type": "http", "headers": headers, "client": (host, 40000), "path": "/"}
    return Request(scope)


def no_such_key(key: str) -> Any:
    raise AuthenticationError("invalid API key")


def request_owned(host: str, token: str, owner: str) -> Request:
    request = request_from(host, token)
    request.scope["headers"].append((b"x-lmaas-job-owner", owner.encode()))
    return request


async def test_a_runner_actor_s_secret_is_its_job_s_from_any_address() -> None:
    key = SimpleNamespace(id="key123", active=True, rpm=None, tpm=None)
    keys: Any = SimpleNamespace(
        cached_verify=lambda key: None,
        verify=no_such_key,
        get=lambda key_id: key if key_id == "key123" else no_such_key(key_id),
    )
    held = {("runner-1", "key123"), ("runner-2", None)}
    asked: list[tuple[str, str | None]] = []

    def holds_owner(runner: str, owner: str | None) -> bool:
        asked.append((runner, owner))
        return (runner, owner) in held

    auth = Authenticator(keys, bind_host="0.0.0.0")
    auth.trust_local_admin("lmaas-local-t0k")
    auth.trust_runner(
        "local-token", remote={SECRET: "runner-1", OTHER: "runner-2"}.get, holds_owner=holds_owner
    )
    # The owner of a job the runner holds: that key's request (asked once, then cached).
    for _ in range(2):
        owner = await auth.authenticate_inference(request_owned("10.0.0.9", SECRET, "key123"))
        assert owner is key
    assert asked == [("runner-1", "key123")]
    # No owner named: only for a runner holding an open server's job.
    assert await auth.authenticate_inference(request_from("10.0.0.9", OTHER)) is None
    # Any other key, the local admin's, or no owner from a runner holding none such: 403.
    for request in (
        request_owned("10.0.0.9", OTHER, "key123"),
        request_owned("10.0.0.9", SECRET, "key999"),
        request_owned("10.0.0.9", SECRET, "local-admin"),
        request_from("10.0.0.9", SECRET),
    ):
        with pytest.raises(PermissionDeniedError):
            await auth.authenticate_inference(request)
    with pytest.raises(AuthenticationError):  # the local runner's token: from loopback only
        await auth.authenticate_inference(request_from("10.0.0.9", "local-token"))
    # The local runner is trusted with its owner header, as before.
    assert await auth.authenticate_inference(request_from("127.0.0.1", "local-token")) is None
    local = request_owned("127.0.0.1", "local-token", "local-admin")
    assert (await auth.authenticate_inference(local)) is LOCAL_ADMIN


# -- runner actors on a fake Ray ------------------------------------------------------------------


class FakeRunnerActor:
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.config: RunnerConfig | None = None
        self.secret: str | None = None
        self.wakes = 0
        self.running: asyncio.Future[None] | None = None
        self.node = SimpleNamespace(remote=self._node)
        self.run = SimpleNamespace(remote=self._run)
        self.wake = SimpleNamespace(remote=self._wake)
        self.stop = SimpleNamespace(remote=self._stop)

    async def _node(self) -> str:
        return "10.0.0.9/abcd1234"

    def _run(self, config_json: str, secret: str) -> asyncio.Future[None]:
        self.config = RunnerConfig.model_validate_json(config_json)
        self.secret = secret
        self.running = asyncio.get_running_loop().create_future()
        return self.running

    def _wake(self) -> None:
        self.wakes += 1

    def _stop(self) -> None:
        if self.running is not None and not self.running.done():
            self.running.get_loop().call_soon_threadsafe(self.running.set_result, None)


class FakeRay:
    def __init__(self) -> None:
        self.actors: list[FakeRunnerActor] = []
        self.killed: list[FakeRunnerActor] = []

    def remote(self, cls: type) -> Any:
        api = self

        def options(**given: Any) -> Any:
            def make() -> FakeRunnerActor:
                api.actors.append(FakeRunnerActor(given))
                return api.actors[-1]

            return SimpleNamespace(remote=make)

        return SimpleNamespace(options=options)

    def kill(self, actor: FakeRunnerActor, *, no_restart: bool) -> None:
        assert no_restart
        self.killed.append(actor)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - a condition on the supervisor's work
            await asyncio.sleep(0.01)


def settings_with(**ray: Any) -> Settings:
    return Settings(port=8000, database_url=PG, jobs={"ray": ray})


def test_kinds_asking_for_the_same_resources_share_a_runner_actor() -> None:
    same = runner_groups(settings_with(num_cpus=0.25, resources={"lmaas_jobs": 1}))
    assert [(g.kinds, g.options()) for g in same] == [
        (
            ("batch", "eval_run"),
            {"num_cpus": 0.25, "max_restarts": 0, "resources": {"lmaas_jobs": 1.0}},
        )
    ]
    split = runner_groups(settings_with(memory=2**30, per_kind={"eval_run": {"num_cpus": 2}}))
    assert [(g.kinds, g.num_cpus, g.memory) for g in split] == [
        (("batch",), 0.5, 2**30),
        (("eval_run",), 2, 2**30),
    ]
    with pytest.raises(ValueError, match="fine_tune"):  # the kinds allowed are named
        settings_with(kinds=["serving"])
    tuning = runner_groups(
        settings_with(kinds=["batch", "fine_tune"], per_kind={"fine_tune": {"num_cpus": 2}})
    )
    assert [(g.kinds, g.num_cpus) for g in tuning] == [(("batch",), 0.5), (("fine_tune",), 2)]


def test_runner_actors_need_a_ray_cluster_and_a_postgresql_catalog(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ray_cluster = SimpleNamespace(kind="ray", ray=FakeRay(), gateway_url="http://gw:8000")
    assert isinstance(ray_runners(settings_with(), ray_cluster), RayRunners)
    assert ray_runners(settings_with(), SimpleNamespace(kind="local")) is None
    assert ray_runners(settings_with(kinds=[]), ray_cluster) is None
    with caplog.at_level(logging.WARNING):
        assert ray_runners(Settings(port=8000), ray_cluster) is None
    assert "SQLite" in caplog.text and "LMAAS_DATABASE_URL" in caplog.text


async def test_a_dead_runner_actor_is_replaced_and_its_leases_and_secret_end() -> None:
    api = FakeRay()
    settings = settings_with(kinds=["batch"], num_cpus=0.25)
    runners = RayRunners(settings, api, "http://gw:8000", PG)
    await runners.start()
    try:
        await until(lambda: len(api.actors) == 1 and api.actors[0].config is not None)
        first = api.actors[0]
        assert first.config is not None and first.secret is not None
        assert first.options["num_cpus"] == 0.25 and first.options["max_restarts"] == 0
        assert first.config.kinds == ["batch"]
        assert first.config.node_cache_dir == settings.cluster.node_cache_dir
        assert (first.config.database_url, first.config.gateway_url) == (PG, "http://gw:8000")
        assert first.config.release_runner is None
        assert first.config.runner_id.startswith("10.0.0.9/abcd1234-")
        assert runners.secret_ok(first.secret) and not runners.secret_ok("guess")

        assert first.running is not None
        first.running.set_exception(RuntimeError("the actor died"))  # as a RayActorError
        await until(lambda: len(api.actors) == 2 and api.actors[1].config is not None)
        second = api.actors[1]
        assert second.config is not None and second.secret is not None
        assert api.killed == [first] and runners.restarts == 1
        assert second.config.release_runner == first.config.runner_id
        assert not runners.secret_ok(first.secret) and runners.secret_ok(second.secret)
        runners.wake()
        assert (first.wakes, second.wakes) == (0, 1)
    finally:
        await runners.stop()
    assert api.killed == [first, second]
    assert not runners.secret_ok(second.secret)
