"""The /admin model and request-record routes in process: a real model store on SQLite behind
the app, and a recording stand-in for the deployment manager (what it is told, what it serves)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from lmaas.config import ModelConfig, Settings
from lmaas.db import create_db_engine, session_factory, upgrade_to_head
from lmaas.errors import NotFoundError
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.keys import KeyStore
from lmaas.protocol.deploy import DeploymentCreate, DeploymentOut, DeploymentPatch
from lmaas.records.store import RecordStore
from lmaas.store.blobs import BlobStore
from lmaas.store.catalog import Catalog
from lmaas.store.model_store import ModelStore
from tests.bad_inputs import ADMIN_CASES, AdminCase, check_error_envelope
from tests.fakes import FakeEngine
from tests.hf_folder import folder_files, tar_bytes, write_folder

FILES = folder_files()
TAR = {"Content-Type": "application/x-tar"}


class RecordingDeployments:
    """The deployment manager as the model routes see it: the models it was told changed
    (deployments following their aliases roll) and the versions it serves (not deletable)."""

    def __init__(self) -> None:
        self.changed: list[str] = []
        self.served: set[tuple[str, int]] = set()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def list(self) -> list[DeploymentOut]:
        return []

    def get(self, name: str) -> DeploymentOut:
        raise NotFoundError(f"no deployment {name!r}")

    async def create(self, body: DeploymentCreate) -> DeploymentOut:
        raise NotImplementedError

    async def update(self, name: str, body: DeploymentPatch) -> DeploymentOut:
        raise NotImplementedError

    async def delete(self, name: str) -> None:
        raise NotImplementedError

    async def on_aliases_changed(self, model: str) -> None:
        self.changed.append(model)

    def served_versions(self) -> set[tuple[str, int]]:
        return set(self.served)

    def pool_usage(self) -> None:
        return None


class Admin:
    def __init__(
        self, app: FastAPI, key: str, deployments: RecordingDeployments, store: ModelStore
    ) -> None:
        self.transport = httpx.ASGITransport(app=app)
        self.http = httpx.AsyncClient(
            transport=self.transport,
            base_url="http://test",
            headers={"Authorization": f"Bearer {key}"},
        )
        self.deployments = deployments
        self.store = store

    async def upload(self, name: str = "tiny") -> httpx.Response:
        return await self.http.post(
            f"/admin/models/{name}/versions", content=tar_bytes(FILES), headers=TAR
        )


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    db = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
    upgrade_to_head(db)
    sessions = session_factory(db)
    keys = KeyStore(sessions, cache_ttl=0)
    admin_key, _ = keys.create("admin")
    store = ModelStore(Catalog(sessions), BlobStore(tmp_path / "home"), max_upload_bytes=1 << 22)
    deployments = RecordingDeployments()
    app = create_app(
        Settings(models=[ModelConfig(name="fake", path="/fake.gguf")]),
        {"fake": FakeEngine("fake")},
        auth=Authenticator(keys, bind_host="127.0.0.1"),
        store=store,
        deployments=deployments,
        record_store=RecordStore(sessions),
    )
    admin = Admin(app, admin_key, deployments, store)
    async with admin.http:
        yield admin
    db.dispose()


async def test_an_upload_is_a_version_and_tells_the_deployments(admin: Admin) -> None:
    r = await admin.upload()
    assert r.status_code == 201, r.text
    v = r.json()
    assert (v["object"], v["model"], v["number"], v["format"]) == ("model.version", "tiny", 1, "hf")
    assert (v["source"], v["aliases"], v["state"]) == ("upload:tar", ["latest"], "ready")
    assert admin.deployments.changed == ["tiny"]

    shown = (await admin.http.get("/admin/models/tiny")).json()
    assert (shown["object"], shown["latest"], shown["aliases"]) == ("model.entry", 1, {"latest": 1})
    assert [x["digest"] for x in shown["versions"]] == [v["digest"]]
    listed = (await admin.http.get("/admin/models")).json()
    assert [(m["name"], m["versions"]) for m in listed["data"]] == [("tiny", None)]
    assert admin.deployments.changed == ["tiny"]  # reading changes nothing


async def test_a_download_is_the_folder_as_a_tar_with_its_digest(admin: Admin) -> None:
    v = (await admin.upload()).json()
    r = await admin.http.get("/admin/models/tiny/versions/latest/content")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-tar"
    assert r.headers["x-digest"] == v["digest"]
    assert int(r.headers["content-length"]) == len(r.content)
    got = {}
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        for member in tar:
            data = tar.extractfile(member)
            assert data is not None, member.name
            got[member.name] = data.read()
    assert got == FILES


async def test_served_versions_are_not_deleted(admin: Admin) -> None:
    await admin.upload()
    admin.deployments.served = {("tiny", 1)}
    for path in ("/admin/models/tiny/versions/1", "/admin/models/tiny"):
        r = await admin.http.delete(path)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["message"] == ("tiny version 1 is being served; undeploy it first")
    assert admin.deployments.changed == ["tiny"]  # the upload only

    admin.deployments.served = set()
    assert (await admin.http.delete("/admin/models/tiny/versions/1")).status_code == 204
    assert admin.deployments.changed == ["tiny", "tiny"]
    assert (await admin.http.get("/admin/models/tiny/versions/1")).status_code == 404


async def test_a_broken_version_is_shown_with_its_error_and_not_sent(admin: Admin) -> None:
    v = (await admin.upload()).json()
    manifest = admin.store.folder_files(admin.store.catalog.get_version("tiny", 1))
    vocab = next(f for f in manifest if f.path == "vocab.txt")
    admin.store.blobs.path_for(vocab.digest).unlink()
    admin.store.recover()  # what the next start does
    error = f"vocab.txt: blob {vocab.digest} is missing"
    shown = (await admin.http.get("/admin/models/tiny")).json()
    assert shown["latest"] is None
    assert [(x["number"], x["state"], x["error"]) for x in shown["versions"]] == [
        (1, "broken", error)
    ]
    r = await admin.http.get("/admin/models/tiny/versions/1")
    assert r.status_code == 200 and (r.json()["digest"], r.json()["state"]) == (
        v["digest"],
        "broken",
    )
    r = await admin.http.get("/admin/models/tiny/versions/1/content")
    assert r.status_code == 409 and r.json()["error"]["code"] == "version_broken"
    assert error in r.json()["error"]["message"]
    assert (await admin.http.delete("/admin/models/tiny/versions/1")).status_code == 204


async def test_aliases_move_and_go(admin: Admin) -> None:
    await admin.upload()
    await admin.upload()
    r = await admin.http.put("/admin/models/tiny/aliases/prod", json={"version": "1"})
    assert r.status_code == 200, r.text
    assert (r.json()["number"], r.json()["aliases"]) == (1, ["prod"])
    assert (await admin.http.get("/admin/models/tiny/versions/prod")).json()["number"] == 1
    assert (await admin.http.delete("/admin/models/tiny/aliases/prod")).status_code == 204
    assert (await admin.http.get("/admin/models/tiny/versions/prod")).status_code == 404
    assert admin.deployments.changed == ["tiny"] * 4


async def test_an_import_needs_exactly_one_source(admin: Admin, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "folder", FILES)
    neither = await admin.http.post("/admin/models/tiny/import", json={})
    both = await admin.http.post(
        "/admin/models/tiny/import", json={"path": str(folder), "package": "tiny"}
    )
    for r in (neither, both):
        assert r.status_code == 400 and r.json()["error"]["param"] == "path"
    r = await admin.http.post("/admin/models/tiny/import", json={"path": str(folder)})
    assert r.status_code == 201, r.text
    assert (r.json()["format"], r.json()["source"]) == ("hf", f"dir:{folder}")
    assert admin.deployments.changed == ["tiny"]


async def test_refused_uploads_change_nothing(admin: Admin) -> None:
    r = await admin.http.post(
        "/admin/models/tiny/versions", content=b"x", headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 415 and r.json()["error"]["param"] == "Content-Type"
    r = await admin.http.post(
        "/admin/models/tiny/versions", content=b"x", headers={"Content-Type": "multipart/form-data"}
    )
    assert r.status_code == 400 and "boundary" in r.json()["error"]["message"]
    assert (await admin.http.get("/admin/models/tiny")).status_code == 404
    assert admin.deployments.changed == []


async def test_every_admin_route_needs_an_admin_key(admin: Admin) -> None:
    async with httpx.AsyncClient(transport=admin.transport, base_url="http://test") as anyone:
        for path in ("/admin/models", "/admin/requests", "/admin/deployments"):
            r = await anyone.get(path)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["code"] == "missing_api_key"


async def test_request_records_page(admin: Admin) -> None:
    r = await admin.http.get("/admin/requests", params={"status": "ok", "limit": 5})
    assert r.json() == {"object": "list", "data": [], "next_cursor": None}
    bad = await admin.http.get("/admin/requests", params={"status": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"


@pytest.mark.parametrize("case", ADMIN_CASES, ids=[c.id for c in ADMIN_CASES])
async def test_version_numbers_beyond_any_column_are_4xx(admin: Admin, case: AdminCase) -> None:
    assert (await admin.upload()).status_code == 201
    path = case.path.replace("{model}", "tiny")
    r = await admin.http.request(case.method, path, json=case.body)
    assert r.status_code == case.status, r.text
    assert check_error_envelope(r.json())["param"] == case.param
    assert (await admin.http.get("/admin/models/tiny/versions/1")).status_code == 200
