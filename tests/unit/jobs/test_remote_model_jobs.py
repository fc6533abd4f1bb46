"""Fine-tuning and quantizing on a runner without the gateway's disk, without a cluster: the
storage seam's model methods (a source version fetched by digest into the node cache, a GGUF
file or a folder sent with its sha256) against a fake gateway and against the local store; the
gateway's rules for a runner on its internal routes, on a real SQLite catalog and store (the
source blobs only of a job the runner holds, a version only of its job's model, a body that is
not what it announced refused with nothing kept); and a whole quantization job run through
``GatewayJobFiles`` and the real routes, ending as a local one does. The real cluster is in
``tests/e2e/test_ray_jobs.py``."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from lmaas.db import create_db_engine, session_factory, upgrade_to_head
from lmaas.errors import PermissionDeniedError
from lmaas.gateway.errors import install_error_handlers
from lmaas.gateway.routes import internal
from lmaas.gateway.runner_access import RunnerAccess
from lmaas.jobs.context import JobContext
from lmaas.jobs.leases import JobLeases
from lmaas.jobs.quantize import QuantizeHandler, QuantizeTools
from lmaas.jobs.storage import (
    FILES_ROUTE,
    VERSIONS_ROUTE,
    GatewayJobFiles,
    LocalJobFiles,
    OutputRefused,
    catalog_lookup,
)
from lmaas.jobs.store import COMPLETED, JobStore
from lmaas.store.blobs import BlobStore
from lmaas.store.catalog import Catalog, VersionInfo
from lmaas.store.evaluations import Evaluations
from lmaas.store.files import FileLimits, FileStore
from lmaas.store.folder import FolderFile, manifest_bytes
from lmaas.store.model_store import ModelStore
from lmaas.store.node_cache import BlobFetchError, NodeCache, Source
from tests.hf_folder import folder_files, tar_bytes, write_folder
from tests.unit.jobs.fake_gateway import ADMIN, OTHER, RUNNERS, SECRET, URL, FakeBlobGateway
from tests.unit.jobs.test_quantize import FakeTools, tiny_gguf


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the seam against a fake gateway --------------------------------------------------------------


class FakeGateway(FakeBlobGateway):
    """Blobs by hex digest; a new version answered as model:7 after checking the body's hash."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        super().__init__(blobs, SECRET)
        self.versions: list[tuple[dict[str, str], bytes]] = []

    def route(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == VERSIONS_ROUTE:
            params, body = dict(request.url.params), request.read()
            self.versions.append((params, body))
            if sha(body) != params["sha256"]:
                return httpx.Response(400, json={"error": {"code": "digest_mismatch"}})
            return httpx.Response(201, json={"model": params["model"], "number": 7})
        return httpx.Response(404)


def version(fmt: str, digest: str, size: int, model: str = "base") -> VersionInfo:
    fields: dict[str, Any] = dict.fromkeys(VersionInfo.__dataclass_fields__)
    fields.update(model=model, number=1, format=fmt, digest=digest, size_bytes=size)
    return VersionInfo(**fields)


def remote_files(
    tmp: Path, gateway: FakeGateway, looked_up: list[Any], token: str = SECRET
) -> GatewayJobFiles:
    def versions(model: str, number: int) -> VersionInfo:
        looked_up.append((model, number))
        return version("gguf", "sha256:" + "0" * 64, 1, model)

    return GatewayJobFiles(
        lambda file_id: None,
        NodeCache(tmp / "node"),
        Source("http://gw:8000", token),
        versions=versions,
        client=httpx.Client(transport=httpx.MockTransport(gateway.handle)),
    )


def test_a_gguf_source_is_fetched_by_digest_once(tmp_path: Path) -> None:
    data = b"GGUF" + bytes(range(200))
    gateway = FakeGateway({sha(data): data})
    files = remote_files(tmp_path, gateway, [])
    for _ in range(2):
        path = files.model_path(version("gguf", f"sha256:{sha(data)}", len(data)))
        assert path.read_bytes() == data
    assert gateway.fetches == [sha(data)]
    assert path.parent == tmp_path / "node" / "blobs"


def test_a_folder_source_is_its_manifest_then_its_files_linked_in_the_cache(
    tmp_path: Path,
) -> None:
    content = folder_files()
    listed = [FolderFile(name, f"sha256:{sha(data)}", len(data)) for name, data in content.items()]
    manifest = manifest_bytes(listed)
    blobs = {sha(data): data for data in content.values()} | {sha(manifest): manifest}
    gateway = FakeGateway(blobs)
    files = remote_files(tmp_path, gateway, [])
    # The catalog's size of a folder is its files' total, not its manifest's.
    folder = files.model_path(version("hf", f"sha256:{sha(manifest)}", 10**6))
    assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.*")} == (
        content
    )
    assert gateway.fetches[0] == sha(manifest) and len(gateway.fetches) == len(content) + 1

    # A file served with other bytes than its digest is refused, and no folder is built.
    bad = dict(blobs) | {sha(content["vocab.txt"]): b"not the vocabulary"}
    other = remote_files(tmp_path / "other", FakeGateway(bad), [])
    with pytest.raises(BlobFetchError, match="discarded"):
        other.model_path(version("hf", f"sha256:{sha(manifest)}", 10**6))
    assert not (tmp_path / "other" / "node" / "models" / sha(manifest)).exists()


def test_a_new_version_is_sent_with_its_sha256_and_read_back_from_the_catalog(
    tmp_path: Path,
) -> None:
    gateway, looked_up = FakeGateway({}), list[Any]()
    files = remote_files(tmp_path, gateway, looked_up)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" * 1000)
    made = files.store_version(
        "ftjob-1", "out", gguf, source="fine-tune ftjob-1 of base:1", moves_latest=False
    )
    assert (made.model, looked_up) == ("out", [("out", 7)])
    params, body = gateway.versions[0]
    assert body == gguf.read_bytes()
    assert params == {
        "job": "ftjob-1",
        "model": "out",
        "format": "gguf",
        "sha256": sha(body),
        "source": "fine-tune ftjob-1 of base:1",
        "description": "",
        "moves_latest": "false",
    }

    folder = write_folder(tmp_path / "hf", folder_files())
    files.store_version("ftjob-1", "out", folder, source="fine-tune ftjob-1 of base:1")
    params, body = gateway.versions[1]
    assert params["format"] == "hf" and params["sha256"] == sha(body)
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        sent = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert sent == folder_files()

    refusing = remote_files(tmp_path, FakeGateway({}), [], token="stale-secret")
    with pytest.raises(OutputRefused, match="401"):
        refusing.store_version("ftjob-1", "out", gguf, source="fine-tune ftjob-1")


def test_local_job_files_read_and_import_into_the_store(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
    upgrade_to_head(engine)
    sessions = session_factory(engine)
    store = ModelStore(Catalog(sessions), BlobStore(tmp_path / "home"), max_upload_bytes=1 << 22)
    files = LocalJobFiles(FileStore(sessions, store, FileLimits(1 << 20, 1 << 16)), store)
    first = files.store_version("j1", "m", tiny_gguf(tmp_path / "a.gguf", "Q8_0"), source="j1")
    second = files.store_version(
        "j1", "m", tiny_gguf(tmp_path / "b.gguf", "Q4_0"), source="j1", moves_latest=False
    )
    folder = files.store_version(
        "j1", "m", write_folder(tmp_path / "f", folder_files()), source="j1"
    )
    assert (first.format, second.format, folder.format) == ("gguf", "gguf", "hf")
    assert files.model_path(second).read_bytes() == (tmp_path / "b.gguf").read_bytes()
    assert (files.model_path(folder) / "vocab.txt").read_bytes() == folder_files()["vocab.txt"]
    assert store.catalog.get_version("m").number == folder.number  # a folder moves latest
    engine.dispose()


# -- the gateway's rules, on a real catalog and store ---------------------------------------------


@dataclass
class Gateway:
    tmp: Path
    sessions: Any
    store: ModelStore
    files: FileStore
    jobs: JobStore
    leases: JobLeases
    app: FastAPI

    def upload_file(self, data: bytes) -> str:
        return self.files.add([data], purpose="fine-tune", filename="f.jsonl", owner_key_id=None).id

    def client(self) -> TestClient:
        return TestClient(self.app, base_url=URL)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    engine = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
    upgrade_to_head(engine)
    sessions = session_factory(engine)
    store = ModelStore(Catalog(sessions), BlobStore(tmp_path / "home"), max_upload_bytes=1 << 22)
    files = FileStore(sessions, store, FileLimits(1 << 20, 1 << 16))
    jobs = JobStore(sessions)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(internal.router)
    app.state.runner_access = RunnerAccess(
        RUNNERS.get, ("batch", "fine_tune", "quantize"), jobs, files, store
    )
    leases = JobLeases(sessions, lease_seconds=30, max_attempts=3)
    yield Gateway(tmp_path, sessions, store, files, jobs, leases, app)
    engine.dispose()


def fine_tune_job(gw: Gateway, base: VersionInfo, train: str, valid: str) -> str:
    given = {
        "base": {"model": base.model, "number": base.number},
        "training_file": train,
        "validation_file": valid,
        "output_model": "base-ft",
        "method_settings": {},
    }
    job = gw.jobs.create(
        "fine_tune", id_prefix="ftjob", owner_key_id=None, input=given, input_file_id=train
    )
    claimed = gw.leases.claim("r1")
    assert claimed is not None and claimed.id == job.id
    return job.id


def get(client: TestClient, digest: str, token: str) -> Any:
    return client.get(
        f"/internal/blobs/{digest.removeprefix('sha256:')}",
        headers={"Authorization": f"Bearer {token}"},
    )


def test_a_runner_gets_the_blobs_of_the_fine_tune_it_holds_and_no_others(gw: Gateway) -> None:
    base = gw.store.import_folder("base", write_folder(gw.tmp / "base", folder_files()))
    other = gw.store.import_file("other", tiny_gguf(gw.tmp / "other.gguf", "Q8_0"))
    train, valid = gw.upload_file(b'{"text": "a"}\n'), gw.upload_file(b'{"text": "b"}\n')
    job_id = fine_tune_job(gw, base, train, valid)
    valid_digest = gw.files.get(valid, ADMIN).digest
    base_blobs = [base.digest, *(f.digest for f in gw.store.folder_files(base))]
    with gw.client() as client:
        for digest in [*base_blobs, valid_digest]:
            r = get(client, digest, SECRET)
            assert r.status_code == 200, (digest, r.text)
            assert r.content == gw.store.blobs.path_for(digest).read_bytes()
        # Another runner, another model's blob, a stale secret: nothing.
        assert get(client, base.digest, OTHER).status_code == 404
        assert get(client, valid_digest, OTHER).status_code == 404
        assert get(client, other.digest, SECRET).status_code == 404
        assert get(client, base.digest, "stale").status_code == 401
        # Once the job has ended, its source is not served any more.
        assert gw.leases.finish(job_id, "r1", COMPLETED, message="done")
        assert get(client, base.digest, SECRET).status_code == 404


def a_fine_tune_and_its_gguf(gw: Gateway) -> tuple[str, bytes, str]:
    """A fine-tune job of a stored base, the GGUF file it made, and the source note its
    version must carry."""
    base = gw.store.import_file("base", tiny_gguf(gw.tmp / "base.gguf", "F16"))
    train = gw.upload_file(b'{"text": "a"}\n')
    job_id = fine_tune_job(gw, base, train, train)
    gguf = tiny_gguf(gw.tmp / "made.gguf", "Q8_0").read_bytes()
    return job_id, gguf, f"fine-tune {job_id} of base:1"


def post_version(client: TestClient, body: bytes, token: str = SECRET, **params: Any) -> Any:
    query = {"format": "gguf", "sha256": sha(body), "moves_latest": "true"} | params
    return client.post(
        VERSIONS_ROUTE, params=query, content=body, headers={"Authorization": f"Bearer {token}"}
    )


def test_a_runner_stores_versions_of_its_own_job_s_model_only(gw: Gateway) -> None:
    job_id, gguf, note = a_fine_tune_and_its_gguf(gw)
    mine = {"job": job_id, "model": "base-ft", "source": note}
    blobs_before = set(gw.store.blobs.digests())
    with gw.client() as client:
        assert post_version(client, gguf, "stale", **mine).status_code == 401
        assert post_version(client, gguf, OTHER, **mine).status_code == 403
        assert post_version(client, gguf, **(mine | {"model": "base"})).status_code == 403
        assert post_version(client, gguf, **(mine | {"job": "ftjob-nope"})).status_code == 403
        # The source note is exactly the one the job writes, not any text naming it.
        for source in ("made by hand", f"x {note}", f"{note} and more", f"fine-tune {job_id}"):
            r = post_version(client, gguf, **(mine | {"source": source}))
            assert r.status_code == 400, (source, r.text)
        # A body that is not what was announced: refused, no version, no blob kept.
        r = post_version(client, gguf, **(mine | {"sha256": sha(b"something else")}))
        assert r.status_code == 400 and r.json()["error"]["code"] == "digest_mismatch"
        assert gw.store.catalog.list_models() and not _versions(gw, "base-ft")
        assert set(gw.store.blobs.digests()) == blobs_before

        r = post_version(client, gguf, **mine)
        assert r.status_code == 201, r.text
        assert r.json() == {"model": "base-ft", "number": 1}
        made = gw.store.catalog.get_version("base-ft", 1)
        assert (made.format, made.source, made.quantization) == ("gguf", note, "Q8_0")
        assert gw.store.blobs.path_for(made.digest).read_bytes() == gguf

        # A folder comes as a tar: its names are checked as an admin upload's are.
        folder = tar_bytes(folder_files())
        r = post_version(client, folder, **(mine | {"format": "hf"}))
        assert r.status_code == 201, r.text
        hf = gw.store.catalog.get_version("base-ft", 2)
        assert hf.format == "hf"
        assert {f.path for f in gw.store.folder_files(hf)} == set(folder_files())
        evil = tar_bytes({"../escape.json": b"{}"} | folder_files())
        assert post_version(client, evil, **(mine | {"format": "hf"})).status_code == 400
        assert not (gw.tmp / "escape.json").exists() and len(_versions(gw, "base-ft")) == 2

        gw.leases.finish(job_id, "r1", COMPLETED, message="done")
        assert post_version(client, gguf, **mine).status_code == 403


def test_a_job_no_longer_held_when_its_version_s_body_ends_gets_no_version(gw: Gateway) -> None:
    job_id, gguf, note = a_fine_tune_and_its_gguf(gw)
    access: RunnerAccess = gw.app.state.runner_access
    access.version_job("r1", job_id, "base-ft", note)  # held when the upload starts

    async def body() -> AsyncIterator[bytes]:
        yield gguf[:100]
        # The lease ends (the job cancelled, or taken over) while the body is on its way.
        await asyncio.to_thread(gw.leases.finish, job_id, "r1", COMPLETED, message="done")
        yield gguf[100:]

    still_held = functools.partial(access.version_job, "r1", job_id, "base-ft", note)
    with pytest.raises(PermissionDeniedError):
        asyncio.run(
            access.store_version(
                "base-ft",
                body(),
                fmt="gguf",
                sha256=sha(gguf),
                source=note,
                description="",
                moves_latest=True,
                still_held=still_held,
            )
        )
    assert not _versions(gw, "base-ft")


def post_file(client: TestClient, job: str, body: bytes, token: str = SECRET, **params: str) -> Any:
    query = {"job": job, "purpose": "batch_output", "filename": "out.jsonl"} | params
    return client.post(
        FILES_ROUTE, params=query, content=body, headers={"Authorization": f"Bearer {token}"}
    )


def test_a_runner_gets_inputs_and_stores_outputs_only_of_batches_it_holds(gw: Gateway) -> None:
    data = b'{"custom_id": "a"}\n'
    input_id = gw.upload_file(data)
    digest = gw.files.get(input_id, ADMIN).digest
    job = gw.jobs.create(
        "batch", id_prefix="batch", owner_key_id="key-abc", input={}, input_file_id=input_id
    )
    files_before = gw.files.list(ADMIN, limit=100).files
    with gw.client() as client:
        # Queued: no runner gets its input, nor stores a file for it.
        assert get(client, digest, SECRET).status_code == 404
        assert post_file(client, job.id, b"x\n").status_code == 403
        claimed = gw.leases.claim("r1", ["batch"])
        assert claimed is not None and claimed.id == job.id
        assert get(client, digest, SECRET).content == data
        assert get(client, digest, OTHER).status_code == 404
        assert post_file(client, job.id, b"x\n", OTHER).status_code == 403
        # Past files.max_bytes (1 MiB here): 413, nothing kept.
        r = post_file(client, job.id, b"x" * ((1 << 20) + 1))
        assert r.status_code == 413, r.text
        assert gw.files.list(ADMIN, limit=100).files == files_before
        # The owner is the job's, whatever the runner says.
        r = post_file(client, job.id, b"out\n", owner="local-admin")
        assert r.status_code == 201, r.text
        made = gw.files.get(r.json()["id"], ADMIN)
        assert (made.owner_key_id, made.purpose, made.bytes) == ("key-abc", "batch_output", 4)
        assert gw.leases.finish(job.id, "r1", COMPLETED, message="done")
        assert post_file(client, job.id, b"x\n").status_code == 403
        assert get(client, digest, SECRET).status_code == 404


def _versions(gw: Gateway, model: str) -> list[VersionInfo]:
    try:
        return gw.store.catalog.list_versions(model)
    except Exception:
        return []


# -- a whole quantization through the gateway -----------------------------------------------------


def test_a_quantization_on_a_node_of_its_own_ends_as_a_local_one_does(gw: Gateway) -> None:
    source = gw.store.import_file("tiny", tiny_gguf(gw.tmp / "source.gguf", "Q4_1"))
    held_out = gw.upload_file(
        json.dumps({"text": "The keeper climbed the stairs."}).encode() + b"\n"
    )
    given = {
        "model": "tiny",
        "number": source.number,
        "types": ["Q8_0", "Q4_0"],
        "eval_file": held_out,
    }
    job = gw.jobs.create(
        "quantize",
        id_prefix="qjob",
        owner_key_id=None,
        input=given,
        input_file_id=held_out,
        total=3,
    )
    claimed = gw.leases.claim("r1")
    assert claimed is not None and claimed.id == job.id
    tools = FakeTools()
    node = gw.tmp / "node"
    with gw.client() as client:
        files = GatewayJobFiles(
            catalog_lookup(gw.sessions),
            NodeCache(node),
            Source(URL, SECRET),
            versions=gw.store.catalog.get_version,
            client=client,  # type: ignore[arg-type]  # an httpx client over the app
        )
        handler = QuantizeHandler(
            Catalog(gw.sessions),
            files,
            Evaluations(gw.sessions),
            node / "jobs",
            QuantizeTools(quantize=tools.quantize, measure=tools.measure),
        )
        ctx = JobContext(job=claimed, runner="r1", leases=gw.leases)
        outcome = asyncio.run(handler.run(ctx))
    assert outcome.status == COMPLETED, outcome
    assert tools.quantized == ["Q8_0", "Q4_0"]
    assert tools.texts[0] == "The keeper climbed the stairs."
    # The source and the held-out file came into the node cache by digest.
    assert (node / "blobs" / f"sha256-{source.digest[7:]}").is_file()
    made = {v.number: v for v in gw.store.catalog.list_versions("tiny")}
    assert [(v.quantization, v.source) for n, v in sorted(made.items()) if n > 1] == [
        ("Q8_0", f"quantize {job.id}: Q8_0 of tiny:1"),
        ("Q4_0", f"quantize {job.id}: Q4_0 of tiny:1"),
    ]
    assert gw.store.catalog.get_version("tiny").number == 1  # latest stays on the source
    assert gw.store.catalog.get_version("tiny", "q8_0").number == 2
    assert [row["version"] for row in outcome.result["versions"]] == [2, 3]  # type: ignore[index]
    assert not (node / "jobs" / job.id).exists()
