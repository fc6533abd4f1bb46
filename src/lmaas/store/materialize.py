"""Folders on disk for Hugging Face versions: ``<home>/models/<manifest hex>/``.

A loader such as ``transformers.AutoModel.from_pretrained(dir)`` wants a directory, the store
keeps blobs. A folder is built from hard links to the blobs (copies where the file system has
no hard links) in a temporary directory beside it, then renamed into place, so a folder name
only ever appears for a complete folder. Only manifest paths in normal form
(:func:`folder.member_path`) are joined to the directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Container, Sequence
from pathlib import Path
from typing import Final

from lmaas.store.blobs import BlobStore, normalize_digest
from lmaas.store.folder import FolderFile, member_path

log = logging.getLogger(__name__)

_TEMP_PREFIX: Final = ".partial-"
_HEX_RE: Final = re.compile(r"[0-9a-f]{64}")


class FolderCache:
    """Materialised folders under ``root`` (created on first use)."""

    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self.root = root
        self._blobs = blobs

    def path_for(self, digest: str) -> Path:
        return self.root / normalize_digest(digest).removeprefix("sha256:")

    def complete(self, digest: str, files: Sequence[FolderFile]) -> bool:
        """Whether the folder of the manifest ``digest`` is there with every file of ``files``
        at its size."""
        return _complete(self.path_for(digest), files)

    def ensure(self, digest: str, files: Sequence[FolderFile]) -> Path:
        """The folder of the manifest ``digest`` listing ``files``; (re)built if it is missing
        or incomplete."""
        target = self.path_for(digest)
        if _complete(target, files):
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=self.root))
        try:
            for file in files:
                self._place(file, building)
            if target.exists():
                if _complete(target, files):  # a concurrent build finished first: keep it
                    return target
                _remove(target)  # incomplete (files removed by hand): set it aside
            try:
                os.rename(building, target)
            except OSError:
                if not _complete(target, files):  # not a concurrent build that won
                    raise
        finally:
            if building.exists():
                _remove(building)
        return target

    def _place(self, file: FolderFile, directory: Path) -> None:
        parts = member_path(file.path).split("/")
        destination = directory.joinpath(*parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        source = self._blobs.path_for(file.digest)
        try:
            os.link(source, destination)
        except OSError:  # no hard links here (another file system, or not supported)
            shutil.copyfile(source, destination)
        # Read-only, so a loader cannot change a blob in place through its link.
        os.chmod(destination, 0o444)

    def remove(self, digest: str) -> None:
        path = self.path_for(digest)
        if path.exists():
            _remove(path)

    def sweep(self, referenced: Container[str]) -> int:
        """Remove unfinished builds and folders of manifests no version references."""
        if not self.root.is_dir():
            return 0
        removed = 0
        for entry in self.root.iterdir():
            partial = entry.name.startswith(_TEMP_PREFIX)
            orphan = _HEX_RE.fullmatch(entry.name) and f"sha256:{entry.name}" not in referenced
            if (partial or orphan) and entry.is_dir() and not entry.is_symlink():
                _remove(entry)
                removed += 1
        return removed


def _complete(target: Path, files: Sequence[FolderFile]) -> bool:
    if not target.is_dir():
        return False
    for file in files:
        try:
            if target.joinpath(*file.path.split("/")).stat().st_size != file.size:
                return False
        except OSError:
            return False
    return True


def _remove(path: Path) -> None:
    # Renamed first so a half-removed folder never sits under its real name.
    doomed = path.with_name(f"{_TEMP_PREFIX}{path.name}-{os.getpid()}-{id(path)}")
    with contextlib.suppress(OSError):
        os.rename(path, doomed)
        path = doomed
    shutil.rmtree(path, ignore_errors=True)
