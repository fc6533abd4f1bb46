"""The content-addressed blob store."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lmaas.errors import InvalidRequestError, NotFoundError, RequestTooLargeError
from lmaas.store.blobs import BlobStore, normalize_digest

CONTENT = b"hello blob " * 1000
HEX = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "home")


def chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def files_in(store: BlobStore) -> list[str]:
    return sorted(p.name for p in store.blobs_dir.iterdir())


def test_write_stores_content_under_its_sha256(store: BlobStore) -> None:
    info = store.write(chunks(CONTENT), max_bytes=len(CONTENT))
    assert info.digest == f"sha256:{HEX}"
    assert (info.size, info.created) == (len(CONTENT), True)
    assert info.path == store.blobs_dir / f"sha256-{HEX}"
    assert info.path.read_bytes() == CONTENT
    assert files_in(store) == [f"sha256-{HEX}"]
    with store.open(info.digest) as f:
        assert f.read() == CONTENT
    assert store.exists(HEX) and store.size(info.digest) == len(CONTENT)
    assert list(store.digests()) == [info.digest]


def test_identical_content_is_stored_once(store: BlobStore) -> None:
    first = store.write(chunks(CONTENT), max_bytes=1 << 20)
    second = store.write_file(io.BytesIO(CONTENT), max_bytes=1 << 20)
    assert second.digest == first.digest and not second.created
    assert files_in(store) == [f"sha256-{HEX}"]


def test_empty_blob(store: BlobStore) -> None:
    info = store.write([], max_bytes=0)
    assert info.digest == "sha256:" + hashlib.sha256(b"").hexdigest() and info.size == 0


def test_size_cap_aborts_and_leaves_nothing(store: BlobStore) -> None:
    with pytest.raises(RequestTooLargeError, match=f"limit of {len(CONTENT) - 1} bytes"):
        store.write(chunks(CONTENT), max_bytes=len(CONTENT) - 1)
    assert files_in(store) == []
    assert store.write(chunks(CONTENT), max_bytes=len(CONTENT)).created  # exactly at the cap


def test_failing_stream_leaves_nothing(store: BlobStore) -> None:
    def broken() -> Iterator[bytes]:
        yield b"partial data"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.write(broken(), max_bytes=1 << 20)
    assert files_in(store) == []


async def test_write_async_streams_and_cleans_up(store: BlobStore) -> None:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks(CONTENT):
            yield chunk

    info = await store.write_async(body(), max_bytes=1 << 20)
    assert info.digest == f"sha256:{HEX}" and info.path.read_bytes() == CONTENT

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 10
        raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        await store.write_async(broken(), max_bytes=1 << 20)
    with pytest.raises(RequestTooLargeError):
        await store.write_async(body(), max_bytes=100)
    assert files_in(store) == [f"sha256-{HEX}"]


@pytest.mark.parametrize(
    "digest",
    [
        "",
        HEX[:-1],
        HEX + "0",
        HEX.upper(),
        f"sha256:{HEX.upper()}",
        f"sha256-{HEX}",
        f"sha512:{HEX}",
        f"sha256:{HEX}\n",
        f" {HEX}",
        f"{HEX}\x00",
        f"sha256:{HEX}/../../etc/passwd",
        "../../etc/passwd",
        "/etc/passwd",
        "sha256:..%2F..%2Fetc%2Fpasswd",
        "sha256:" + "g" * 64,
    ],
)
def test_bad_digests_never_become_paths(store: BlobStore, digest: str) -> None:
    for call in (store.path_for, store.open, store.exists, store.delete, normalize_digest):
        with pytest.raises(InvalidRequestError, match="64 lowercase hex"):
            call(digest)


def test_good_digest_forms_map_to_one_path_inside_the_store(store: BlobStore) -> None:
    assert store.path_for(HEX) == store.path_for(f"sha256:{HEX}")
    assert store.path_for(HEX).parent == store.blobs_dir
    assert normalize_digest(HEX) == f"sha256:{HEX}"


def test_missing_blob(store: BlobStore) -> None:
    with pytest.raises(NotFoundError, match="is not stored") as caught:
        store.open(HEX)
    assert caught.value.code == "blob_not_found"
    with pytest.raises(NotFoundError):
        store.size(HEX)
    assert not store.exists(HEX)
    assert store.delete(HEX) is False


def test_delete(store: BlobStore) -> None:
    info = store.write([CONTENT], max_bytes=1 << 20)
    assert store.delete(info.digest) is True
    assert not info.path.exists() and files_in(store) == []


def test_sweep_removes_abandoned_writes_only(store: BlobStore) -> None:
    kept = store.write([b"complete"], max_bytes=100)
    abandoned = store.writer(max_bytes=100)
    abandoned.append(b"half of an upl")  # never committed nor aborted: as after a crash
    assert len(files_in(store)) == 2
    assert BlobStore(store.root).sweep_temp() == 1
    assert files_in(store) == [kept.path.name]


def test_kill_mid_write_leaves_no_blob_after_restart(store: BlobStore) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from lmaas.store.blobs import BlobStore
        writer = BlobStore(Path({str(store.root)!r})).writer(max_bytes=1 << 30)
        writer.append(b"x" * 100_000)
        print("written", flush=True)
        sys.stdin.read()  # wait here until killed
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"written\n"
        child.kill()
    finally:
        child.wait(timeout=10)
    assert child.returncode != 0
    leftovers = files_in(store)
    assert len(leftovers) == 1 and not leftovers[0].startswith("sha256-")
    restarted = BlobStore(store.root)
    assert restarted.sweep_temp() == 1
    assert files_in(restarted) == [] and list(restarted.digests()) == []


def test_writer_cannot_be_reused(store: BlobStore) -> None:
    writer = store.writer(max_bytes=100)
    writer.append(b"abc")
    info = writer.commit()
    with pytest.raises(RuntimeError):
        writer.append(b"more")
    with pytest.raises(RuntimeError):
        writer.commit()
    writer.abort()  # after a commit: nothing to do, the blob stays
    assert info.path.read_bytes() == b"abc"


def test_the_claim_comes_before_the_blob_is_looked_at(store: BlobStore) -> None:
    seen: list[tuple[str, bool]] = []

    def claim(digest: str) -> None:
        seen.append((digest, store.exists(digest)))

    first = store.write(chunks(CONTENT), len(CONTENT), claim)
    second = store.write(chunks(CONTENT), len(CONTENT), claim)
    assert (first.created, second.created) == (True, False)
    assert seen == [(f"sha256:{HEX}", False), (f"sha256:{HEX}", True)]


def test_a_refused_claim_stores_nothing(store: BlobStore) -> None:
    def claim(digest: str) -> None:
        raise RuntimeError("the catalog is down")

    with pytest.raises(RuntimeError, match="catalog is down"):
        store.write(chunks(CONTENT), len(CONTENT), claim)
    assert files_in(store) == []


def test_check_names_what_is_wrong_with_a_blob(store: BlobStore) -> None:
    info = store.write([CONTENT], len(CONTENT))
    assert store.check(info.digest, len(CONTENT), rehash=True) is None
    wrong_size = store.check(info.digest, 5)
    assert wrong_size == f"blob {info.digest} has {len(CONTENT)} bytes instead of 5"
    info.path.write_bytes(CONTENT.upper())  # same size, other bytes
    assert store.check(info.digest, len(CONTENT)) is None  # a size check cannot see it
    assert "is damaged" in (store.check(info.digest, rehash=True) or "")
    info.path.unlink()
    assert store.check(info.digest) == f"blob {info.digest} is missing"
