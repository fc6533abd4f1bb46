"""What a job runner actor on another node may reach in this gateway besides the OpenAI
endpoints: the blobs of its jobs' input files and the storing of its output files.

Both take only the secret of a runner actor's current run (:mod:`lmaas.jobs.ray_runners`).
A blob is served only when a job of a kind those actors run, not finished, reads a file of
those bytes; an output file is one of :data:`lmaas.jobs.storage.OUTPUT_PURPOSES`, owned by
the key the runner names (the job's owner, as on its other requests).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from lmaas.jobs.store import JobStore
from lmaas.store.blobs import BlobStore
from lmaas.store.files import FileStore


class RunnerAccess:
    """The blob source (``routes/internal.py``) and output store of runner actors."""

    def __init__(
        self,
        secret_ok: Callable[[str], bool],
        kinds: Collection[str],
        jobs: JobStore,
        files: FileStore,
        blobs: BlobStore,
    ) -> None:
        self._secret_ok = secret_ok
        self._kinds = tuple(kinds)
        self._jobs = jobs
        self._files = files
        self._blobs = blobs

    def token_ok(self, token: str) -> bool:
        return self._secret_ok(token)

    def blob_path(self, hexdigest: str) -> Path | None:
        """The blob when a job the actors run reads it (blocking: asks the catalog)."""
        if not self._jobs.reads_blob(f"sha256:{hexdigest}", self._kinds):
            return None
        path = self._blobs.path_for(hexdigest)
        return path if path.is_file() else None

    def add_output(
        self, chunks: Iterable[bytes], *, purpose: str, filename: str, owner: str | None
    ) -> str:
        """Store an output file a runner sent; its id (blocking)."""
        return self._files.add(chunks, purpose=purpose, filename=filename, owner_key_id=owner).id
