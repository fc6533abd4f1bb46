"""Blobs shared by concurrent uploads, deletions and restarts, on SQLite and PostgreSQL.

The races are driven step by step: each upload's body pauses at a chosen byte until the test
lets it go on, so the interleaving that lost data (issue 10, item 2) happens every time.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.requests import ClientDisconnect

from lmaas.errors import ConflictError, InvalidRequestError
from lmaas.store import refs as refs_module
from lmaas.store.blobs import BlobStore
from lmaas.store.catalog import Catalog, VersionInfo
from lmaas.store.model_store import ModelStore
from lmaas.store.probe import probe_gguf
from tests.hf_folder import folder_files, tar_bytes, write_folder
from tests.unit.store.gguf_builder import small_model

FILES = folder_files()
# vocab.txt first: the blob a later upload finds already stored, and which checking a folder
# never reads (so nothing but its content reveals that it went missing).
ORDERED = {"vocab.txt": FILES["vocab.txt"], **FILES}
DEADLINE = 30.0


@pytest.fixture
def store(catalog: Catalog, tmp_path: Path) -> ModelStore:
    return ModelStore(catalog, BlobStore(tmp_path / "home"), max_upload_bytes=1 << 22)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def end_of_first_member(data: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        first = tar.getmembers()[0]
    return first.offset_data + first.size


async def paused_body(
    data: bytes, cut: int, asked_for_more: asyncio.Event, go_on: asyncio.Event, *, fail: bool
) -> AsyncIterator[bytes]:
    """``data[:cut]``; then, once the store asks for more (so it has stored everything before
    ``cut``), wait for ``go_on`` and either send the rest or go away as a client would."""
    yield data[:cut]
    asked_for_more.set()
    await go_on.wait()
    if fail:
        raise ClientDisconnect()
    yield data[cut:]


def untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def assert_complete(store: ModelStore, version: VersionInfo) -> None:
    """Every byte of the version can be downloaded and hashes to what its manifest says."""
    length, chunks = store.folder_tar(version)
    data = b"".join(chunks)
    assert len(data) == length
    assert untar(data) == FILES
    for file in store.folder_files(version):
        with store.blobs.open(file.digest) as f:
            assert sha256(f.read()) == file.digest == sha256(FILES[file.path])


async def wait(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), DEADLINE)


async def whole(data: bytes) -> AsyncIterator[bytes]:
    yield data


def start_paused(
    store: ModelStore, data: bytes, cut: int, *, fail: bool
) -> tuple[asyncio.Task[VersionInfo], asyncio.Event, asyncio.Event]:
    """An upload of ``data`` paused at ``cut``: (its task, set when everything before ``cut``
    is stored, set by the test to let it go on)."""
    stored, go_on = asyncio.Event(), asyncio.Event()
    body = paused_body(data, cut, stored, go_on, fail=fail)
    task = asyncio.create_task(store.upload_folder("tiny", body, "tar", source="upload:tar"))
    return task, stored, go_on


async def test_a_dropped_upload_leaves_the_blob_another_upload_found(store: ModelStore) -> None:
    data = tar_bytes(ORDERED)
    cut = end_of_first_member(data)
    # Upload A stores vocab.txt, then waits mid-archive.
    first, a_stored, a_go_on = start_paused(store, data, cut, fail=True)
    await wait(a_stored)
    assert store.blobs.exists(sha256(FILES["vocab.txt"]))
    # Upload B of the same content finds vocab.txt stored, and waits right after.
    second, b_found, b_go_on = start_paused(store, data, cut, fail=False)
    await wait(b_found)
    # A's client goes away: A's cleanup runs after B found the blob, before B commits.
    a_go_on.set()
    with pytest.raises(ClientDisconnect):
        await first
    b_go_on.set()
    version = await second
    assert_complete(store, version)
    assert store.recover() == []  # a restart finds nothing missing either
    assert store.catalog.get_version("tiny", version.number).state == "ready"


async def test_deleting_a_version_leaves_the_blob_an_upload_found(store: ModelStore) -> None:
    data = tar_bytes(ORDERED)
    old = await store.upload_folder("tiny", whole(data), "tar", source="upload:tar")
    upload, found, go_on = start_paused(store, data, end_of_first_member(data), fail=False)
    await wait(found)
    # The only version using the blobs goes while the upload that found them is under way.
    await asyncio.to_thread(store.delete_version, "tiny", old.number)
    go_on.set()
    version = await upload
    assert version.number == old.number + 1
    assert_complete(store, version)
    assert store.recover() == []


async def test_a_failed_gguf_upload_leaves_the_blob_another_upload_found(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race for a GGUF file: A's check of the file fails after B found the blob and
    read it, before B records its version."""
    data = small_model().build()
    steps = {name: threading.Event() for name in ("a probing", "a go on", "b probing", "b go on")}

    def probe(path: Path) -> dict[str, Any]:
        if not steps["a probing"].is_set():  # A: fails once B has found and read the blob
            steps["a probing"].set()
            assert steps["a go on"].wait(DEADLINE)
            raise InvalidRequestError("not a GGUF file this time")
        fields = probe_gguf(path)  # B: read it, then wait before recording the version
        steps["b probing"].set()
        assert steps["b go on"].wait(DEADLINE)
        return fields

    monkeypatch.setattr("lmaas.store.model_store.probe_gguf", probe)
    first = asyncio.create_task(store.upload("tiny", whole(data), source="upload"))
    assert await asyncio.to_thread(steps["a probing"].wait, DEADLINE)  # A stored the blob
    second = asyncio.create_task(store.upload("tiny", whole(data), source="upload"))
    assert await asyncio.to_thread(steps["b probing"].wait, DEADLINE)  # B found it
    steps["a go on"].set()
    with pytest.raises(InvalidRequestError):
        await first
    steps["b go on"].set()
    version = await second
    with store.blobs.open(version.digest) as f:
        assert sha256(f.read()) == version.digest == sha256(data)
    assert store.recover() == []


def gguf_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = small_model().build()
    path = tmp_path / "small.gguf"
    path.write_bytes(data)
    return path, data


def overwrite(path: Path, data: bytes) -> None:
    path.chmod(0o644)  # a served folder's hard links made it read-only
    path.write_bytes(data)


def test_start_up_marks_versions_with_missing_blobs_broken(
    store: ModelStore, tmp_path: Path
) -> None:
    catalog = store.catalog
    store.import_path("tiny", write_folder(tmp_path / "v1", FILES))
    v2 = store.import_path("tiny", write_folder(tmp_path / "v2", {**FILES, "extra.txt": b"x"}))
    gguf, data = gguf_file(tmp_path)
    store.import_path("g", gguf)
    store.path_of(v2)  # a served folder, made of hard links to the blobs
    store.blobs.path_for(sha256(b"x")).unlink()  # deleted from disk behind the store's back
    overwrite(store.blobs.path_for(sha256(data)), data[:100])  # and one cut short

    broken = store.recover()

    assert sorted((v.model, v.number, v.state) for v in broken) == [
        ("g", 1, "broken"),
        ("tiny", 2, "broken"),
    ]
    shown = catalog.get_version("tiny", 2, broken_ok=True)
    assert shown.error == f"extra.txt: blob {sha256(b'x')} is missing"
    assert [v.state for v in catalog.list_versions("tiny")] == ["ready", "broken"]
    with pytest.raises(ConflictError) as refused:
        catalog.get_version("tiny", 2)  # what deploying or downloading it asks for
    assert refused.value.code == "version_broken" and "extra.txt" in refused.value.message
    assert catalog.get_version("tiny").number == 1  # latest skips the broken version
    with pytest.raises(ConflictError):
        catalog.set_alias("tiny", "production", 2)
    cut = catalog.get_version("g", 1, broken_ok=True)
    assert cut.error == f"blob {sha256(data)} has 100 bytes instead of {len(data)}"
    assert catalog.get_model("g").latest is None
    # What the broken versions still have is kept, so putting the lost file back repairs them.
    assert store.blobs.exists(v2.digest) and store.blobs.exists(sha256(FILES["config.json"]))
    overwrite(store.blobs.path_for(sha256(data)), data)
    store.blobs.path_for(sha256(b"x")).write_bytes(b"x")
    assert store.recover() == []
    assert catalog.get_version("tiny").number == 2 and catalog.get_version("g").error is None


def test_rehash_finds_blobs_whose_content_changed(store: ModelStore, tmp_path: Path) -> None:
    store.import_path("tiny", write_folder(tmp_path / "v1", FILES))
    vocab = store.blobs.path_for(sha256(FILES["vocab.txt"]))
    overwrite(vocab, bytes(len(FILES["vocab.txt"])))  # same size, other bytes
    assert store.recover() == []  # sizes only, by default
    (broken,) = store.recover(rehash=True)
    assert broken.error == (
        f"vocab.txt: blob {sha256(FILES['vocab.txt'])} is damaged "
        "(its content no longer matches its digest)"
    )


def waiting_for_the_blob_lock(engine: Engine) -> int:
    """PostgreSQL sessions waiting for the blob lock (an advisory lock on one bigint key)."""
    key = refs_module._PG_BLOB_LOCK
    query = text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND classid::bigint = :high AND objid::bigint = :low AND objsubid = 1"
    )
    with engine.connect() as conn:
        return int(conn.scalar(query, {"high": key >> 32, "low": key & 0xFFFFFFFF}) or 0)


# PostgreSQL only: on SQLite every catalog transaction holds the write lock (BEGIN IMMEDIATE),
# so there is no advisory lock to wait on.
@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)
def test_a_claim_waits_while_a_collect_deletes(catalog: Catalog, db_engine: Engine) -> None:
    refs = catalog.refs
    digest = sha256(b"blob")
    events: list[str] = []

    def claim() -> None:
        refs.claim("upload-b", digest)
        events.append("claimed")

    claimer = threading.Thread(target=claim)

    def unlink(found: str) -> None:
        claimer.start()  # an upload that found the blob, while it is being deleted
        deadline = time.monotonic() + DEADLINE
        while not waiting_for_the_blob_lock(db_engine):
            assert time.monotonic() < deadline, "the claim never waited for the blob lock"
            time.sleep(0.01)
        events.append(f"unlinked {found}")

    assert refs.collect([digest], unlink) == [digest]
    claimer.join(DEADLINE)
    # The claim went through only once the blob was gone: its upload then stores it anew.
    assert events == [f"unlinked {digest}", "claimed"]
    assert refs.collect([digest], unlink) == []  # and now its lease keeps the blob
