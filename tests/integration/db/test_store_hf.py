"""Hugging Face folders through the model store, on SQLite and PostgreSQL: every way in, the
materialised folder, and refusals that leave nothing behind."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from lmaas.config import SHIPPED_MODELS, Limits, ShippedModel
from lmaas.errors import LmaasError, NotFoundError
from lmaas.store.blobs import BlobStore
from lmaas.store.catalog import Catalog, VersionInfo
from lmaas.store.model_store import ArchiveKind, ModelStore
from tests.hf_folder import (
    PARAMETERS,
    folder_files,
    multipart_body,
    tar_bytes,
    tar_member,
    tar_with,
    weights,
    write_folder,
    zip_bomb,
    zip_bytes,
)

FILES = folder_files()
BOUNDARY = "lmaas-test-boundary"
MAX_MEMBER = 256 << 10
MAX_TOTAL = 1 << 20
MAX_MEMBERS = 32


@pytest.fixture
def store(catalog: Catalog, tmp_path: Path) -> ModelStore:
    return ModelStore(
        catalog,
        BlobStore(tmp_path / "home"),
        max_upload_bytes=MAX_TOTAL,
        max_archive_members=MAX_MEMBERS,
        max_member_bytes=MAX_MEMBER,
    )


async def chunked(data: bytes, size: int = 7001) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def upload(
    store: ModelStore, kind: ArchiveKind, data: bytes, model: str = "tiny"
) -> VersionInfo:
    return await store.upload_folder(
        model, chunked(data), kind, boundary=BOUNDARY, source=f"upload:{kind}"
    )


def on_disk(store: ModelStore) -> set[str]:
    return {str(p.relative_to(store.blobs.root)) for p in store.blobs.root.rglob("*")}


def folder_bytes(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("gz", [False, True])
async def test_a_tar_upload_becomes_a_version(store: ModelStore, gz: bool) -> None:
    v = await upload(store, "tar", tar_bytes(FILES, gz=gz, prefix="./"))
    assert (v.format, v.number, v.state) == ("hf", 1, "ready")
    assert (v.architecture, v.context_length) == ("BertModel", 64)
    assert (v.parameter_count, v.quantization) == (PARAMETERS, "F32")
    assert v.size_bytes == sum(len(d) for d in FILES.values())
    directory = store.path_of(v)
    assert directory == store.blobs.root / "models" / v.digest.removeprefix("sha256:")
    assert folder_bytes(directory) == FILES
    length, chunks = store.folder_tar(v)
    data = b"".join(chunks)
    assert len(data) == length
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert got == FILES


async def test_a_tar_of_dot_with_directory_entries(store: ModelStore, tmp_path: Path) -> None:
    # What `tar -cf x.tar -C folder .` writes: "./", "./1_Pooling/", "./config.json", ...
    source = write_folder(tmp_path / "src", FILES)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(source, arcname=".")
    v = await upload(store, "tar", buffer.getvalue())
    directory = store.path_of(v)
    assert folder_bytes(directory) == FILES
    modes = {p.stat().st_mode & 0o777 for p in directory.rglob("*") if p.is_file()}
    assert modes == {0o444}  # a loader cannot change a blob through its link


async def test_every_way_in_gives_the_same_folder(store: ModelStore, tmp_path: Path) -> None:
    first = await upload(store, "tar", tar_bytes(FILES))
    second = await upload(store, "zip", zip_bytes(FILES))
    third = await upload(store, "multipart", multipart_body(FILES, BOUNDARY))
    source = write_folder(tmp_path / "src", FILES)
    fourth = store.import_path("tiny", source)
    (tmp_path / "f.tar.gz").write_bytes(tar_bytes(FILES, gz=True))
    (tmp_path / "f.zip").write_bytes(zip_bytes(FILES))
    fifth = store.import_path("tiny", tmp_path / "f.tar.gz")
    sixth = store.import_path("tiny", tmp_path / "f.zip")
    versions = [first, second, third, fourth, fifth, sixth]
    assert [v.number for v in versions] == [1, 2, 3, 4, 5, 6]
    assert len({v.digest for v in versions}) == 1
    assert fourth.source == f"dir:{source}" and third.source == "upload:multipart"
    blobs = [p for p in store.blobs.blobs_dir.iterdir() if p.name.startswith("sha256-")]
    assert len(blobs) == len(FILES) + 1  # each file once, and the manifest


async def test_materialised_folder_is_rebuilt_and_removed(store: ModelStore) -> None:
    v = await upload(store, "tar", tar_bytes(FILES))
    await upload(store, "tar", tar_bytes({**FILES, "extra.txt": b"x"}))
    directory = store.path_of(v)
    (directory / "vocab.txt").unlink()
    assert (
        store.path_of(v) == directory
        and (directory / "vocab.txt").read_bytes() == FILES["vocab.txt"]
    )
    (directory / "config.json").unlink()
    (directory / "config.json").write_text("tampered")
    assert (store.path_of(v) / "config.json").read_bytes() == FILES["config.json"]
    store.delete_version("tiny", 1)
    assert not directory.exists()
    assert store.blobs.exists(v.digest) is False
    shared = [p for p in store.blobs.blobs_dir.iterdir() if p.name.startswith("sha256-")]
    assert len(shared) == len(FILES) + 2  # version 2 keeps the files and adds one + manifest


async def test_recover_sweeps_orphan_and_partial_folders(store: ModelStore) -> None:
    v = await upload(store, "tar", tar_bytes(FILES))
    kept = store.path_of(v)
    models = kept.parent
    (models / (".partial-" + "x")).mkdir()
    orphan = models / ("0" * 64)
    (orphan / "sub").mkdir(parents=True)
    foreign = models / "README"
    foreign.write_text("not ours")
    store.recover()
    assert sorted(p.name for p in models.iterdir()) == sorted([kept.name, "README"])
    assert folder_bytes(kept) == FILES


def hostile_cases() -> Iterator[tuple[str, ArchiveKind, bytes, int]]:
    bad = {**FILES}
    yield "tar traversal", "tar", tar_bytes({**bad, "../evil.json": b"{}"}), 400
    yield "tar deep traversal", "tar", tar_bytes({**bad, "a/../../evil.json": b"{}"}), 400
    yield "tar absolute", "tar", tar_bytes({**bad, "/tmp/evil.json": b"{}"}), 400
    yield "tar backslash", "tar", tar_bytes({**bad, "..\\evil.json": b"{}"}), 400
    yield "tar url-encoded", "tar", tar_bytes({**bad, "%2e%2e/evil.json": b"{}"}), 400
    # a NUL survives in a PAX path record (a ustar name field ends at it)
    yield "tar nul", "tar", tar_bytes({**bad, "a" * 120 + "\0/../b.json": b"{}"}), 400
    yield "tar control char", "tar", tar_bytes({**bad, "a\nb.json": b"{}"}), 400
    yield "tar symlink", "tar", tar_with(tar_member("x", tarfile.SYMTYPE, link="/"), files=bad), 400
    yield (
        "tar hard link",
        "tar",
        tar_with(tar_member("x", tarfile.LNKTYPE, link="/etc/passwd"), files=bad),
        400,
    )
    yield "tar fifo", "tar", tar_with(tar_member("x", tarfile.FIFOTYPE), files=bad), 400
    yield "tar device", "tar", tar_with(tar_member("x", tarfile.CHRTYPE), files=bad), 400
    yield "tar duplicate", "tar", tar_with(tar_member("vocab.txt", size=3), files=bad), 400
    yield "tar case duplicate", "tar", tar_with(tar_member("VOCAB.txt", size=3), files=bad), 400
    yield "tar pickle", "tar", tar_bytes({**bad, "pytorch_model.bin": b"\x80\x04"}), 400
    yield "tar truncated", "tar", tar_bytes(bad)[:3000], 400
    yield "not a tar", "tar", b"garbage" * 1000, 400
    yield "no config", "tar", tar_bytes({k: v for k, v in bad.items() if k != "config.json"}), 400
    yield "config not an object", "tar", tar_bytes({**bad, "config.json": b"[1]"}), 400
    yield "config not json", "tar", tar_bytes({**bad, "config.json": b"{"}), 400
    yield "no weights", "tar", tar_bytes({"config.json": FILES["config.json"]}), 400
    yield "bad weights", "tar", tar_bytes({**bad, "model.safetensors": weights()[:-4]}), 400
    yield (
        "index names missing shard",
        "tar",
        tar_bytes(
            {**bad, "model.safetensors.index.json": b'{"weight_map": {"a": "gone.safetensors"}}'}
        ),
        400,
    )
    yield "file over member cap", "tar", tar_bytes({**bad, "big.txt": bytes(MAX_MEMBER + 1)}), 413
    yield (
        "too many members",
        "tar",
        tar_bytes({**bad, **{f"f{i}.txt": b"" for i in range(MAX_MEMBERS)}}),
        413,
    )
    yield "gzip bomb", "tar", tar_bytes({**bad, "big.txt": bytes(8 * MAX_TOTAL)}, gz=True), 413
    yield "zip traversal", "zip", zip_bytes({**bad, "../../evil.json": b"{}"}), 400
    yield "zip absolute", "zip", zip_bytes({**bad, "/etc/evil.json": b"{}"}), 400
    yield "zip symlink", "zip", zip_bytes({**bad, "x": b"/etc"}, modes={"x": 0o120777}), 400
    yield "zip pickle", "zip", zip_bytes({**bad, "weights.pt": b"\x80\x04"}), 400
    yield "zip bomb", "zip", zip_bomb(4 * MAX_MEMBER), 413
    # zipfile stops at the declared size, then the CRC check fails
    yield "zip bomb lying size", "zip", zip_bomb(4 * MAX_MEMBER, declared=100), 400
    yield "zip garbage", "zip", b"PK\x03\x04" + b"x" * 100, 400
    yield (
        "multipart traversal",
        "multipart",
        multipart_body({**bad, "../evil.json": b"{}"}, BOUNDARY),
        400,
    )
    yield (
        "multipart pickle",
        "multipart",
        multipart_body({**bad, "model.ckpt": b"\x80"}, BOUNDARY),
        400,
    )
    yield (
        "multipart no filename",
        "multipart",
        multipart_body(bad, BOUNDARY).replace(b'; filename="vocab.txt"', b""),
        400,
    )
    yield "multipart truncated", "multipart", multipart_body(bad, BOUNDARY)[:-20], 400
    yield "multipart wrong boundary", "multipart", multipart_body(bad, "other"), 400
    yield (
        "multipart over total",
        "multipart",
        multipart_body(
            {**bad, **{f"w{i}.safetensors": bytes(MAX_MEMBER) for i in range(4)}}, BOUNDARY
        ),
        413,
    )


CASES = list(hostile_cases())


@pytest.mark.parametrize(
    ("kind", "data", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_refused_uploads_leave_nothing_behind(
    store: ModelStore, kind: ArchiveKind, data: bytes, status: int
) -> None:
    before = on_disk(store)
    with pytest.raises(LmaasError) as info:
        await upload(store, kind, data)
    assert info.value.status_code == status, info.value.message
    assert on_disk(store) == before
    with pytest.raises(NotFoundError):
        store.catalog.get_model("tiny")


# Zeros unpacked from a few KiB: past the 8 MiB the ratio limit leaves alone, far under every
# default size cap, so only the ratio can refuse it.
BOMB_BYTES = 16 << 20


def with_default_limits(catalog: Catalog, home: Path) -> ModelStore:
    limits = Limits()
    return ModelStore(
        catalog,
        BlobStore(home),
        max_upload_bytes=limits.max_upload_bytes,
        max_archive_members=limits.max_archive_members,
        max_member_bytes=limits.max_member_bytes,
        max_expansion_ratio=limits.max_expansion_ratio,
    )


def bombs() -> Iterator[tuple[str, ArchiveKind, bytes]]:
    big = {**FILES, "big.safetensors": bytes(BOMB_BYTES)}
    yield "gzip", "tar", tar_bytes(big, gz=True)
    yield "zip", "zip", zip_bomb(BOMB_BYTES)


@pytest.mark.parametrize(("kind", "data"), [b[1:] for b in bombs()], ids=[b[0] for b in bombs()])
async def test_default_limits_refuse_a_small_bomb_by_its_ratio(
    catalog: Catalog, tmp_path: Path, kind: ArchiveKind, data: bytes
) -> None:
    store = with_default_limits(catalog, tmp_path / "home")
    assert len(data) < 64 << 10 and Limits().max_member_bytes > BOMB_BYTES
    before = on_disk(store)
    with pytest.raises(LmaasError) as refused:
        await upload(store, kind, data)
    assert refused.value.status_code == 413 and refused.value.code == "expansion_ratio_exceeded"
    assert "limits.max_expansion_ratio" in refused.value.message
    archive = tmp_path / ("bomb.zip" if kind == "zip" else "bomb.tar.gz")
    archive.write_bytes(data)
    with pytest.raises(LmaasError, match=r"limits\.max_expansion_ratio"):
        store.import_path("tiny", archive)  # from the server's disk as well
    assert on_disk(store) == before  # no blob, no temporary file left
    with pytest.raises(NotFoundError):
        store.catalog.get_model("tiny")


async def test_default_limits_take_weights_that_barely_compress(
    catalog: Catalog, tmp_path: Path
) -> None:
    store = with_default_limits(catalog, tmp_path / "home")
    noise = np.random.default_rng(7).standard_normal(BOMB_BYTES // 4, dtype=np.float32)
    files = {**FILES, "more.safetensors": weights({"noise": noise})}
    v = await upload(store, "tar", tar_bytes(files, gz=True))
    assert v.size_bytes == sum(len(d) for d in files.values())


async def test_pickle_refusal_says_to_convert(store: ModelStore) -> None:
    with pytest.raises(LmaasError, match="convert them to safetensors"):
        await upload(store, "tar", tar_bytes({**FILES, "pytorch_model.bin": b"\x80"}))


async def test_a_refused_folder_keeps_blobs_other_versions_use(store: ModelStore) -> None:
    good = await upload(store, "tar", tar_bytes(FILES))
    before = on_disk(store)
    with pytest.raises(LmaasError):
        await upload(store, "tar", tar_bytes({**FILES, "new.txt": b"new", "../x": b""}))
    with pytest.raises(LmaasError):
        await upload(store, "tar", tar_bytes({**FILES, "config.json": b"[]"}))
    assert on_disk(store) == before
    assert [v.number for v in store.catalog.list_versions("tiny")] == [good.number]
    assert folder_bytes(store.path_of(good)) == FILES


def test_server_directories_refuse_every_link(store: ModelStore, tmp_path: Path) -> None:
    outside = write_folder(tmp_path / "elsewhere", {"weights": FILES["model.safetensors"]})
    source = write_folder(
        tmp_path / "source", {k: v for k, v in FILES.items() if k != "model.safetensors"}
    )
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref")
    before = on_disk(store)
    links = {
        "model.safetensors": outside / "weights",  # a file outside the directory
        "1_Pooling/inside.json": source / "config.json",  # a file inside it
        "loop": source,  # a directory
        "gone": tmp_path / "missing",  # nothing at all
    }
    for name, target in links.items():
        (source / name).symlink_to(target)
        with pytest.raises(LmaasError) as refused:
            store.import_path("tiny", source)
        assert refused.value.status_code == 400 and refused.value.code == "symlink_refused"
        assert f"{name!r} is a symbolic link" in refused.value.message
        (source / name).unlink()
    assert on_disk(store) == before  # nothing read from any link was stored
    with pytest.raises(NotFoundError):
        store.catalog.get_model("tiny")
    os.mkfifo(source / "fifo")
    with pytest.raises(LmaasError, match="'fifo' is not a regular file or directory"):
        store.import_folder("tiny", source)
    (source / "fifo").unlink()
    with pytest.raises(LmaasError, match="not a directory"):
        store.import_folder("tiny", tmp_path / "missing")
    # The directory named may itself be reached through a link: the operator chose it.
    (source / "model.safetensors").write_bytes(FILES["model.safetensors"])
    (tmp_path / "chosen").symlink_to(source)
    v = store.import_path("tiny", tmp_path / "chosen")
    assert folder_bytes(store.path_of(v)) == FILES  # .git skipped


def test_import_path_refuses_pickles_and_missing_paths(store: ModelStore, tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"\x80\x04")
    with pytest.raises(LmaasError, match="safetensors"):
        store.import_path("tiny", tmp_path / "model.pt")
    with pytest.raises(LmaasError, match="not a file"):
        store.import_path("tiny", tmp_path / "nothing.gguf")


def test_shipped_folder_is_imported_on_first_start(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "fake_shipped_folder"
    write_folder(package / "model", FILES)
    (package / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    shipped = ShippedModel(
        package="fake_shipped_folder", file="model", format="hf", description="test folder"
    )
    missing = ShippedModel(package="no_such_package_here", file="m", description="absent")
    monkeypatch.setattr(
        "lmaas.store.model_store.SHIPPED_MODELS", {"fake-folder": shipped, "absent": missing}
    )
    imported = store.ensure_shipped()
    assert [(v.model, v.format) for v in imported] == [("fake-folder", "hf")]
    assert imported[0].source == "pypi:fake_shipped_folder/model"
    assert "fake_shipped_folder" not in sys.modules
    assert store.ensure_shipped() == []  # only on first start
    assert SHIPPED_MODELS["all-minilm-l6-v2"].format == "hf"
