"""The file store on SQLite and PostgreSQL: owners, pages, and blobs shared with versions and
with other files, through deletions and the start-up sweep."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import Engine

from lmaas.db import session_factory
from lmaas.errors import NotFoundError
from lmaas.store.blobs import BlobStore
from lmaas.store.catalog import Catalog, VersionMetadata
from lmaas.store.files import FileLimits, FileStore, Viewer
from lmaas.store.model_store import ModelStore

ALICE, BOB = Viewer("aaaaaaaaaaaa"), Viewer("bbbbbbbbbbbb")
OPEN, ADMIN = Viewer(None), Viewer("cccccccccccc", admin=True)


@pytest.fixture
def models(catalog: Catalog, tmp_path: Path) -> ModelStore:
    return ModelStore(catalog, BlobStore(tmp_path / "home"), max_upload_bytes=1 << 20)


@pytest.fixture
def files(db_engine: Engine, models: ModelStore) -> FileStore:
    limits = FileLimits(max_bytes=1 << 20, max_line_bytes=1024)
    return FileStore(session_factory(db_engine), models, limits)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_owners_see_their_own_files_and_an_admin_all(files: FileStore) -> None:
    mine = files.add([b"a"], purpose="user_data", filename="a", owner_key_id=ALICE.key_id)
    shared = files.add([b"o"], purpose="batch_output", filename="o", owner_key_id=None)
    assert [f.id for f in files.list(ALICE).files] == [mine.id]
    assert [f.id for f in files.list(OPEN).files] == [shared.id]
    assert files.list(BOB).files == []
    assert [f.id for f in files.list(ADMIN).files] == [shared.id, mine.id]
    assert files.get(mine.id, ADMIN) == mine and files.get(shared.id, OPEN) == shared
    for viewer, file in ((BOB, mine), (OPEN, mine), (ALICE, shared)):
        with pytest.raises(NotFoundError):
            files.get(file.id, viewer)
        with pytest.raises(NotFoundError):
            files.delete(file.id, viewer)


def test_pages_follow_the_ids_in_both_orders(files: FileStore) -> None:
    made = [
        files.add([bytes([i])], purpose=p, filename=str(i), owner_key_id=ALICE.key_id).id
        for i, p in enumerate(["batch", "evals", "batch", "user_data", "batch"])
    ]
    assert made == sorted(made)  # ids sort in creation order
    first = files.list(ALICE, limit=2)
    assert [f.id for f in first.files] == made[:2:-1][:2] == [made[4], made[3]]
    assert first.has_more
    rest = files.list(ALICE, limit=10, after=made[3])
    assert [f.id for f in rest.files] == [made[2], made[1], made[0]] and not rest.has_more
    asc = files.list(ALICE, order="asc", after=made[1], purpose="batch")
    assert [f.id for f in asc.files] == [made[2], made[4]]
    files.delete(made[2], ALICE)
    assert [f.id for f in files.list(ALICE, after=made[2]).files] == [made[1], made[0]]


def test_a_blob_outlives_every_user_but_the_last(
    files: FileStore, models: ModelStore, catalog: Catalog
) -> None:
    data = b'{"item": {"q": 1}}\n'
    catalog.create_model("m")
    blob = models.blobs.write([data], 1 << 20)
    meta = VersionMetadata(format="gguf", size_bytes=len(data))
    catalog.add_version("m", meta, blob.digest)
    one = files.add([data], purpose="evals", filename="a", owner_key_id=ALICE.key_id)
    two = files.add([data], purpose="evals", filename="b", owner_key_id=BOB.key_id)
    assert one.digest == two.digest == digest(data)

    models.delete_model("m")  # the files still hold the blob
    assert models.blobs.exists(one.digest)
    assert models.recover() == [] and models.blobs.exists(one.digest)  # so does the sweep
    files.delete(one.id, ALICE)
    assert models.blobs.exists(one.digest)  # bob's file still uses it
    files.delete(two.id, BOB)
    assert not models.blobs.exists(one.digest)
