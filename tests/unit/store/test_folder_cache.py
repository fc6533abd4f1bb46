"""Hugging Face folders built from hard links to blobs (``store/materialize.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lmaas.store.blobs import BlobStore
from lmaas.store.folder import FolderFile
from lmaas.store.materialize import FolderCache

MANIFEST = "sha256:" + "ab" * 32


def stored(blobs: BlobStore, files: dict[str, bytes]) -> list[FolderFile]:
    out = []
    for path, data in files.items():
        info = blobs.write([data], max_bytes=1 << 20)
        out.append(FolderFile(path=path, digest=info.digest, size=len(data)))
    return out


def test_a_folder_links_its_blobs_read_only_and_is_rebuilt_when_incomplete(
    tmp_path: Path,
) -> None:
    blobs = BlobStore(tmp_path)
    files = stored(blobs, {"config.json": b"{}", "sub/model.safetensors": b"weights" * 10})
    cache = FolderCache(tmp_path / "models", blobs)
    folder = cache.ensure(MANIFEST, files)
    weights = folder / "sub" / "model.safetensors"
    assert weights.read_bytes() == b"weights" * 10
    assert weights.stat().st_ino == blobs.path_for(files[1].digest).stat().st_ino
    assert weights.stat().st_mode & 0o222 == 0
    weights.unlink()  # a file removed by hand
    assert not cache.complete(MANIFEST, files)
    assert cache.ensure(MANIFEST, files) == folder and cache.complete(MANIFEST, files)


class RacingCache(FolderCache):
    """A build during which another process finishes the same folder first."""

    def __init__(self, root: Path, blobs: BlobStore, files: Sequence[FolderFile]) -> None:
        super().__init__(root, blobs)
        self.other = FolderCache(root, blobs)
        self.files = files
        self.inode: int | None = None

    def _place(self, file: FolderFile, directory: Path) -> None:
        if self.inode is None:
            self.inode = self.other.ensure(MANIFEST, self.files).stat().st_ino
        super()._place(file, directory)


def test_a_folder_another_build_finished_first_is_kept_not_replaced(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    files = stored(blobs, {"config.json": b"{}", "model.safetensors": b"w" * 100})
    racing = RacingCache(tmp_path / "models", blobs, files)
    folder = racing.ensure(MANIFEST, files)
    # The other's folder, which it may be reading, is still the one in place.
    assert racing.inode is not None and folder.stat().st_ino == racing.inode
    assert racing.complete(MANIFEST, files)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [folder.name]  # no leftovers
