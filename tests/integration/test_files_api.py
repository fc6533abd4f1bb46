"""/v1/files in process: a real file store and model store on SQLite behind the app, keys of
both scopes, every route and its errors in OpenAI's envelope."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmaas.cli.files import multipart_upload
from lmaas.config import ModelConfig, Settings
from lmaas.db import create_db_engine, session_factory, upgrade_to_head
from lmaas.gateway.app import create_app
from lmaas.gateway.auth import Authenticator
from lmaas.keys import KeyStore
from lmaas.store.blobs import BlobStore
from lmaas.store.catalog import Catalog
from lmaas.store.file_upload import MULTIPART_OVERHEAD
from lmaas.store.files import FileLimits, FileStore
from lmaas.store.model_store import ModelStore
from tests.bad_inputs import expect_error as error
from tests.fakes import FakeEngine
from tests.hf_folder import folder_files, tar_bytes

MAX_BYTES = 64 * 1024
FOLDER = folder_files()
FILE_KEYS = {
    "id",
    "object",
    "bytes",
    "created_at",
    "filename",
    "purpose",
    "status",
    "expires_at",
    "status_details",
}


def batch_line(custom_id: str, url: str = "/v1/chat/completions") -> dict[str, Any]:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(*lines: object) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


BATCH = jsonl(batch_line("a"), batch_line("b", "/v1/embeddings"))


class Files:
    """The app with its stores, and one HTTP client per key."""

    def __init__(self, tmp_path: Path, *, open_server: bool = False) -> None:
        self.db = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
        upgrade_to_head(self.db)
        sessions = session_factory(self.db)
        keys = KeyStore(sessions, cache_ttl=0)
        self.models = ModelStore(
            Catalog(sessions), BlobStore(tmp_path / "home"), max_upload_bytes=1 << 22
        )
        self.store = FileStore(sessions, self.models, FileLimits(MAX_BYTES, 1024))
        self.keys = {}
        if not open_server:
            self.keys = {
                "admin": keys.create("admin")[0],
                "alice": keys.create("inference")[0],
                "bob": keys.create("inference")[0],
            }
        self.app = create_app(
            Settings(models=[ModelConfig(name="fake", path="/fake.gguf")]),
            {"fake": FakeEngine("fake")},
            auth=Authenticator(keys, bind_host="127.0.0.1"),
            store=self.models,
            file_store=self.store,
        )
        transport = httpx.ASGITransport(app=self.app)
        self.anonymous = httpx.AsyncClient(transport=transport, base_url="http://test")
        self.as_ = {
            who: httpx.AsyncClient(
                transport=transport,
                base_url="http://test",
                headers={"Authorization": f"Bearer {key}"},
            )
            for who, key in self.keys.items()
        }

    def blobs(self) -> set[str]:
        return set(self.models.blobs.digests())

    async def close(self) -> None:
        for client in (self.anonymous, *self.as_.values()):
            await client.aclose()
        await self.app.state.chat_serving.close()
        self.db.dispose()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Files]:
    files = Files(tmp_path)
    yield files
    await files.close()


async def upload(
    client: httpx.AsyncClient,
    data: bytes,
    purpose: str = "batch",
    filename: str = "requests.jsonl",
) -> httpx.Response:
    return await client.post(
        "/v1/files", files={"file": (filename, data)}, data={"purpose": purpose}
    )


def multipart(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, dict[str, str]]:
    """A body with ``parts`` (name, filename, content) in this order."""
    boundary = "b0undary"
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def test_upload_retrieve_list_content_delete(api: Files) -> None:
    alice = api.as_["alice"]
    r = await upload(alice, BATCH)
    assert r.status_code == 200, r.text
    f = r.json()
    assert set(f) == FILE_KEYS
    assert f["id"].startswith("file-") and f["object"] == "file"
    assert (f["bytes"], f["filename"], f["purpose"]) == (len(BATCH), "requests.jsonl", "batch")
    assert (f["status"], f["expires_at"], f["status_details"]) == ("processed", None, None)
    assert isinstance(f["created_at"], int)
    assert (await alice.get(f"/v1/files/{f['id']}")).json() == f

    listed = (await alice.get("/v1/files")).json()
    assert listed == {
        "object": "list",
        "data": [f],
        "first_id": f["id"],
        "last_id": f["id"],
        "has_more": False,
    }
    content = await alice.get(f"/v1/files/{f['id']}/content")
    assert content.status_code == 200 and content.content == BATCH
    assert content.headers["content-length"] == str(len(BATCH))
    digest = "sha256:" + hashlib.sha256(BATCH).hexdigest()
    assert digest in api.blobs()

    r = await alice.delete(f"/v1/files/{f['id']}")
    assert r.status_code == 200 and r.json() == {"id": f["id"], "object": "file", "deleted": True}
    assert digest not in api.blobs()
    for method, path in (
        ("GET", f"/v1/files/{f['id']}"),
        ("GET", f"/v1/files/{f['id']}/content"),
        ("DELETE", f"/v1/files/{f['id']}"),
    ):
        error(await alice.request(method, path), 404, "file_id", "file_not_found")
    assert (await alice.get("/v1/files")).json()["data"] == []


@pytest.mark.parametrize("file_id", ["file-nope", "x" * 300, "file-" + "0" * 24])
async def test_unknown_ids_are_404(api: Files, file_id: str) -> None:
    error(await api.as_["alice"].get(f"/v1/files/{file_id}"), 404, "file_id", "file_not_found")


@pytest.mark.parametrize("purpose", ["assistants", "vision", "batch_output", "", "BATCH"])
async def test_a_bad_purpose_is_a_400_naming_purpose(api: Files, purpose: str) -> None:
    message = error(await upload(api.as_["alice"], BATCH, purpose), 400, "purpose")
    assert "batch, fine-tune, evals, user_data" in message
    assert api.blobs() == set()


async def test_missing_fields_and_wrong_types(api: Files) -> None:
    alice = api.as_["alice"]
    body, headers = multipart(("file", "a.jsonl", BATCH))
    error(await alice.post("/v1/files", content=body, headers=headers), 400, "purpose")
    body, headers = multipart(("purpose", None, b"batch"))
    error(await alice.post("/v1/files", content=body, headers=headers), 400, "file")
    body, headers = multipart(
        ("purpose", None, b"user_data"), ("file", "a", b"1"), ("file", "b", b"2")
    )
    error(await alice.post("/v1/files", content=body, headers=headers), 400, "file")
    r = await alice.post("/v1/files", json={"purpose": "batch"})
    error(r, 415, "Content-Type")
    r = await alice.post(
        "/v1/files", content=b"--x", headers={"Content-Type": "multipart/form-data"}
    )
    error(r, 400, "Content-Type")
    assert api.blobs() == set()


async def test_too_large_is_a_413(api: Files) -> None:
    alice = api.as_["alice"]
    big = b"x" * (MAX_BYTES + 1)
    message = error(await upload(alice, big, "user_data"), 413, "file", "file_too_large")
    assert "files.max_bytes" in message

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: caught while streaming
        body, _ = multipart(("purpose", None, b"user_data"), ("file", "f", big * 20))
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    _, headers = multipart()
    r = await alice.post("/v1/files", content=chunked(), headers=headers)
    error(r, 413, "file", "file_too_large")
    # a Content-Length no acceptable upload can have is refused before the body is read
    _, headers = multipart()
    headers["Content-Length"] = str(MAX_BYTES + MULTIPART_OVERHEAD + 1)

    async def never_read() -> AsyncIterator[bytes]:
        raise AssertionError("the body was read")
        yield b""

    r = await alice.post("/v1/files", content=never_read(), headers=headers)
    error(r, 413, "file", "file_too_large")
    ok = await upload(alice, b"x" * MAX_BYTES, "user_data")
    assert ok.status_code == 200 and ok.json()["bytes"] == MAX_BYTES
    assert len(api.blobs()) == 1


async def test_bad_jsonl_names_the_lines_and_stores_nothing(api: Files) -> None:
    alice = api.as_["alice"]
    lines = [
        json.dumps(batch_line("a")),
        "{not json",
        json.dumps(batch_line("a")),  # duplicate custom_id
        "",
        json.dumps({**batch_line("c"), "url": "/v1/images"}),
        json.dumps({**batch_line("d"), "method": "GET"}),
        "[1, 2]",
        "7",
    ]
    data = "\n".join(lines).encode()
    message = error(await upload(alice, data), 400, "file", "invalid_file")
    assert "line 2: not valid JSON" in message
    assert "line 3: custom_id 'a' repeats line 1" in message
    assert "line 5: url must be one of" in message
    assert 'line 6: method must be "POST"' in message
    assert "line 7: not a JSON object" in message
    assert "line 8" not in message and "the first 5 bad lines" in message
    assert api.blobs() == set() and (await alice.get("/v1/files")).json()["data"] == []

    fine = jsonl({"prompt": "a"})
    message = error(await upload(alice, fine, "fine-tune"), 400, "file")
    assert "line 1: prompt and completion must both be strings" in message
    message = error(await upload(alice, jsonl({"item": [1]}), "evals"), 400, "file")
    assert "line 1: item must be a JSON object" in message
    message = error(await upload(alice, b"\n\n", "evals"), 400, "file")
    assert "no JSONL lines" in message
    # user_data is not checked: any bytes
    assert (await upload(alice, b"\xff\x00{not json", "user_data")).status_code == 200


async def test_a_purpose_sent_after_the_file_is_still_checked(api: Files) -> None:
    alice = api.as_["alice"]
    body, headers = multipart(("file", "x.jsonl", b'{"a": 1}\nnope\n'), ("purpose", None, b"evals"))
    message = error(await alice.post("/v1/files", content=body, headers=headers), 400, "file")
    assert "line 2: not valid JSON" in message
    assert api.blobs() == set()
    good = jsonl({"item": {"q": "2+2", "a": "4"}})
    body, headers = multipart(("file", "x.jsonl", good), ("purpose", None, b"evals"))
    r = await alice.post("/v1/files", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["purpose"] == "evals", r.text
    assert (await alice.get(f"/v1/files/{r.json()['id']}/content")).content == good


@pytest.mark.parametrize(
    ("filename", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\data\\in.jsonl", "C:\\data\\in.jsonl"),  # a backslash is only a character
        ("a b é.jsonl", "a b é.jsonl"),
    ],
)
async def test_the_filename_is_metadata_only(api: Files, filename: str, kept: str) -> None:
    r = await upload(api.as_["alice"], BATCH, filename=filename)
    assert r.status_code == 200 and r.json()["filename"] == kept
    home = api.models.blobs.root
    assert not (home / kept).exists() and not (home.parent / kept).exists()
    content = await api.as_["alice"].get(f"/v1/files/{r.json()['id']}/content")
    assert "attachment; filename*=utf-8''" in content.headers["content-disposition"]


@pytest.mark.parametrize("filename", ["a\x01b.jsonl", "tab\there", "x" * 256])
async def test_bad_filenames_are_refused(api: Files, filename: str) -> None:
    body, headers = multipart(("purpose", None, b"batch"), ("file", filename, BATCH))
    r = await api.as_["alice"].post("/v1/files", content=body, headers=headers)
    error(r, 400, "file", "invalid_filename")
    assert api.blobs() == set()


async def test_files_belong_to_their_key(api: Files) -> None:
    alice, bob, admin = api.as_["alice"], api.as_["bob"], api.as_["admin"]
    mine = (await upload(alice, BATCH)).json()
    theirs = (await upload(bob, BATCH, "user_data")).json()
    for method, path in (
        ("GET", f"/v1/files/{mine['id']}"),
        ("GET", f"/v1/files/{mine['id']}/content"),
        ("DELETE", f"/v1/files/{mine['id']}"),
    ):
        error(await bob.request(method, path), 404, "file_id", "file_not_found")
    assert [f["id"] for f in (await alice.get("/v1/files")).json()["data"]] == [mine["id"]]
    assert [f["id"] for f in (await bob.get("/v1/files")).json()["data"]] == [theirs["id"]]
    # an admin key sees and deletes every file
    listed = (await admin.get("/v1/files")).json()["data"]
    assert [f["id"] for f in listed] == [theirs["id"], mine["id"]]
    assert (await admin.get(f"/v1/files/{mine['id']}/content")).content == BATCH
    assert (await admin.delete(f"/v1/files/{mine['id']}")).status_code == 200
    # identical bytes: bob's file keeps the blob alice's deletion would have freed
    assert (await bob.get(f"/v1/files/{theirs['id']}/content")).content == BATCH
    error(await api.anonymous.get("/v1/files"), 401, None, "missing_api_key")


async def test_an_open_server_has_one_shared_owner(tmp_path: Path) -> None:
    api = Files(tmp_path, open_server=True)
    try:
        f = (await upload(api.anonymous, BATCH)).json()
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api.app),
            base_url="http://test",
            headers={"Authorization": "Bearer sk-anything"},
        )
        async with other:
            assert (await other.get(f"/v1/files/{f['id']}")).json() == f
            assert (await other.delete(f"/v1/files/{f['id']}")).json()["deleted"] is True
    finally:
        await api.close()


async def test_list_pages_orders_and_filters(api: Files) -> None:
    alice = api.as_["alice"]
    ids = []
    for i, purpose in enumerate(["batch", "user_data", "batch", "evals"]):
        data = BATCH if purpose == "batch" else jsonl({"item": {"i": i}})
        r = await upload(alice, data if purpose != "user_data" else b"u", purpose)
        ids.append(r.json()["id"])
    page = (await alice.get("/v1/files", params={"limit": 2})).json()
    assert [f["id"] for f in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ids[3], ids[2])
    rest = (await alice.get("/v1/files", params={"limit": 2, "after": ids[2]})).json()
    assert [f["id"] for f in rest["data"]] == [ids[1], ids[0]] and rest["has_more"] is False
    asc = (await alice.get("/v1/files", params={"order": "asc", "after": ids[0]})).json()
    assert [f["id"] for f in asc["data"]] == ids[1:]
    batch = (await alice.get("/v1/files", params={"purpose": "batch"})).json()
    assert [f["id"] for f in batch["data"]] == [ids[2], ids[0]]
    # a cursor whose file was deleted meanwhile still places the next page
    assert (await alice.delete(f"/v1/files/{ids[2]}")).status_code == 200
    after_gone = (await alice.get("/v1/files", params={"after": ids[2]})).json()
    assert [f["id"] for f in after_gone["data"]] == [ids[1], ids[0]]
    empty = (await alice.get("/v1/files", params={"after": ids[0]})).json()
    assert empty == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }
    error(await alice.get("/v1/files", params={"limit": 0}), 400, "limit")
    error(await alice.get("/v1/files", params={"limit": 10_001}), 400, "limit")
    error(await alice.get("/v1/files", params={"order": "up"}), 400, "order")
    error(await alice.get("/v1/files", params={"after": "nope"}), 400, "after")


async def test_deleting_a_file_keeps_a_blob_a_model_version_shares(api: Files) -> None:
    alice, admin = api.as_["alice"], api.as_["admin"]
    r = await admin.post(
        "/admin/models/tiny/versions",
        content=tar_bytes(FOLDER),
        headers={"Content-Type": "application/x-tar"},
    )
    assert r.status_code == 201, r.text
    shared = FOLDER["config.json"]
    digest = "sha256:" + hashlib.sha256(shared).hexdigest()
    before = api.blobs()
    assert digest in before
    f = (await upload(alice, shared, "user_data", "config.json")).json()
    assert api.blobs() == before  # the same bytes are stored once
    assert (await alice.delete(f"/v1/files/{f['id']}")).status_code == 200
    assert api.blobs() == before and api.models.verify() == []

    # the other way round: the version goes, the file keeps the blob
    f = (await upload(alice, shared, "user_data", "config.json")).json()
    assert (await admin.delete("/admin/models/tiny")).status_code == 204
    assert api.blobs() == {digest}
    assert (await alice.get(f"/v1/files/{f['id']}/content")).content == shared
    # and a restart's sweep keeps it too
    api.models.recover()
    assert api.blobs() == {digest}
    assert (await alice.delete(f"/v1/files/{f['id']}")).status_code == 200
    assert api.blobs() == set()


async def test_a_file_in_use_by_a_job_cannot_be_deleted(api: Files) -> None:
    alice = api.as_["alice"]
    f = (await upload(alice, BATCH)).json()
    running = {f["id"]: "batch batch_1 is running"}
    api.store.add_user(running.get)
    message = error(await alice.delete(f"/v1/files/{f['id']}"), 409, "file_id", "file_in_use")
    assert "batch batch_1 is running" in message
    assert (await alice.get(f"/v1/files/{f['id']}")).status_code == 200
    # another key gets 404, not 409: whether a hidden file is in use is not told
    error(await api.as_["bob"].delete(f"/v1/files/{f['id']}"), 404, "file_id")
    running.clear()
    assert (await alice.delete(f"/v1/files/{f['id']}")).status_code == 200


async def test_the_cli_upload_body_is_read_back_exactly(api: Files, tmp_path: Path) -> None:
    path = tmp_path / 'say "hi" \\ now.jsonl'
    path.write_bytes(BATCH)
    length, content_type, chunks = multipart_upload(path, "batch")
    body = b"".join(chunks)
    assert len(body) == length
    r = await api.as_["alice"].post(
        "/v1/files", content=body, headers={"Content-Type": content_type}
    )
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == 'say "hi" \\ now.jsonl'
    assert (await api.as_["alice"].get(f"/v1/files/{r.json()['id']}/content")).content == BATCH
