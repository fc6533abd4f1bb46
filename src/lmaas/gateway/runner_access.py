"""What a job runner actor on another node may reach in this gateway besides the OpenAI
endpoints: the blobs of its jobs' inputs, the storing of its output files and of the model
versions its jobs make.

All take only the secret of a runner actor's current run (:mod:`lmaas.jobs.ray_runners`),
which names its runner. A blob is served when a job of a kind those actors run, not finished,
that this runner holds (its lease) reads a file of those bytes, or when a fine-tune or
quantization it holds reads a file of those bytes or a source version made of that blob (a GGUF
file, a folder's manifest or one of its files; :mod:`lmaas.jobs.model_jobs`). An output file is
one of :data:`lmaas.jobs.storage.OUTPUT_PURPOSES`, for a job of those kinds, not finished, that
this runner holds; it is owned by that job's owner (never a key the runner names) and held to
``files.max_bytes`` as an upload to ``/v1/files`` is (413 beyond). A new version is accepted only
for a fine-tune or quantization, not finished, of a kind those actors run, that this runner
holds, into the one model the job writes to, with one of the source notes that job writes
(:func:`lmaas.jobs.model_jobs.version_notes`, exactly); its body must hash to the sha256 the
runner announced, and the job must still be held, both checked when the body ends, before the
version exists; it is stored as an admin upload is
(``ModelStore.upload``/``upload_folder``: a folder comes as a tar whose member names are
checked there, never used as paths as given). A training checkpoint is kept, and read back,
only for a fine-tune, not finished, of a kind those actors run, that this runner holds (checked
again when the body has ended); it is the job's owner's, held to
``jobs.ray.max_checkpoint_bytes`` (413 beyond), and its archive is checked as it arrives
(:mod:`lmaas.jobs.checkpoint_store`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Iterable
from pathlib import Path
from typing import Literal

from lmaas.errors import InvalidRequestError, LmaasError, NotFoundError, PermissionDeniedError
from lmaas.jobs.checkpoint_store import JobCheckpoints
from lmaas.jobs.model_jobs import (
    FINE_TUNE,
    MODEL_KINDS,
    input_files,
    output_model,
    source_versions,
    version_notes,
)
from lmaas.jobs.store import JobInfo, JobStore
from lmaas.store.catalog import VersionInfo
from lmaas.store.files import FileStore, Viewer
from lmaas.store.model_store import ModelStore

_EVERYONE = Viewer(None, admin=True)


class RunnerAccess:
    """The blob source (``routes/internal.py``), output files and new versions of runner
    actors (see the module doc)."""

    def __init__(
        self,
        runner_of: Callable[[str], str | None],
        kinds: Collection[str],
        jobs: JobStore,
        files: FileStore,
        store: ModelStore,
        *,
        checkpoints: JobCheckpoints | None = None,
        max_checkpoint_bytes: int = 0,
    ) -> None:
        self._runner_of = runner_of
        self._kinds = tuple(kinds)
        self._model_kinds = tuple(k for k in self._kinds if k in MODEL_KINDS)
        self._jobs = jobs
        self._files = files
        self._store = store
        self._checkpoints = checkpoints
        self.max_checkpoint_bytes = max_checkpoint_bytes

    def runner_of(self, token: str) -> str | None:
        """The runner whose current run has this secret (None: not a live run's)."""
        return self._runner_of(token)

    def token_ok(self, token: str) -> bool:
        return self._runner_of(token) is not None

    def blob_path(self, hexdigest: str, runner: str) -> Path | None:
        """The blob when a job the actors run reads it (blocking: asks the catalog)."""
        digest = f"sha256:{hexdigest}"
        if not self._jobs.reads_blob(
            digest, self._kinds, runner
        ) and digest not in self._held_blobs(runner):
            return None
        path = self._store.blobs.path_for(hexdigest)
        return path if path.is_file() else None

    def _held_blobs(self, runner: str) -> set[str]:
        """Every blob the fine-tunes and quantizations ``runner`` holds read."""
        if not self._model_kinds:
            return set()
        digests: set[str] = set()
        for job in self._jobs.held_by(runner, self._model_kinds):
            for file_id in input_files(job):
                try:
                    digests.add(self._files.get(file_id, _EVERYONE).digest)
                except NotFoundError:
                    continue
            for model, number in source_versions(job):
                digests |= self._version_blobs(model, number)
        return digests

    def _version_blobs(self, model: str, number: int) -> set[str]:
        try:
            version = self._store.catalog.get_version(model, number)
            if version.format != "hf":
                return {version.digest}
            return {version.digest, *(f.digest for f in self._store.folder_files(version))}
        except LmaasError:  # deleted meanwhile, or a manifest that cannot be read
            return set()

    @property
    def max_file_bytes(self) -> int:
        """The largest output file taken (``files.max_bytes``, as for ``/v1/files``)."""
        return self._files.limits.max_bytes

    def held_job(self, runner: str, job_id: str, kinds: Collection[str] | None = None) -> JobInfo:
        """Job ``job_id`` when it is of ``kinds`` (default: those the actors run), not
        finished, and ``runner`` holds it; 403 otherwise (blocking: asks the catalog)."""
        try:
            job = self._jobs.get(job_id, _EVERYONE)
        except NotFoundError:
            raise PermissionDeniedError(f"no job {job_id[:64]!r} of this runner") from None
        allowed = self._kinds if kinds is None else kinds
        if job.kind not in allowed or job.finished or job.lease_owner != runner:
            raise PermissionDeniedError(f"job {job.id} is not one this runner holds")
        return job

    def add_output(
        self, chunks: Iterable[bytes], *, job: JobInfo, purpose: str, filename: str
    ) -> str:
        """Store an output file a runner sent for ``job`` (see :meth:`held_job`), as the job's
        owner's; its id (blocking)."""
        return self._files.add(
            chunks,
            purpose=purpose,
            filename=filename,
            owner_key_id=job.owner_key_id,
            max_bytes=self.max_file_bytes,
        ).id

    @property
    def checkpoints(self) -> JobCheckpoints:
        """Where checkpoints are kept (404: this gateway keeps none)."""
        if self._checkpoints is None:
            raise NotFoundError("this gateway keeps no training checkpoints")
        return self._checkpoints

    def checkpoint_job(self, runner: str, job_id: str) -> JobInfo:
        """The fine-tune ``runner`` keeps or reads a checkpoint of; 403 unless it is one, not
        finished, of a kind the actors run, that ``runner`` holds (blocking: asks the catalog)."""
        return self.held_job(runner, job_id, [k for k in self._kinds if k == FINE_TUNE])

    def version_job(self, runner: str, job_id: str, model: str, source: str) -> JobInfo:
        """The job ``runner`` stores a version of ``model`` for; 403 (nothing stored) unless
        the module doc's rules hold (blocking: asks the catalog)."""
        job = self.held_job(runner, job_id, self._model_kinds)
        if model != output_model(job):
            raise PermissionDeniedError(
                f"job {job.id} makes versions of {output_model(job)!r}, not {model[:128]!r}"
            )
        if source not in version_notes(job):
            raise InvalidRequestError(
                f"a version of job {job.id} has a source note that job writes, not "
                f"{source[:128]!r}",
                param="source",
            )
        return job

    async def store_version(
        self,
        model: str,
        body: AsyncIterable[bytes],
        *,
        fmt: Literal["gguf", "hf"],
        sha256: str,
        source: str,
        description: str,
        moves_latest: bool,
        still_held: Callable[[], object] | None = None,
    ) -> VersionInfo:
        """A version from a runner's body (a GGUF file, or a folder as a tar) that hashes to
        ``sha256``, through the store's upload path; check :meth:`version_job` first, and pass
        it as ``still_held`` to have it checked again when the body has ended."""
        verified = _verified(body, sha256, still_held)
        if fmt == "gguf":
            return await self._store.upload(
                model, verified, source=source, description=description, moves_latest=moves_latest
            )
        return await self._store.upload_folder(
            model, verified, "tar", source=source, description=description
        )


async def _verified(
    body: AsyncIterable[bytes], sha256: str, still_held: Callable[[], object] | None
) -> AsyncIterator[bytes]:
    """``body``, refused at its end (before its reader sees the end) unless it hashed to
    ``sha256`` and ``still_held`` (blocking) does not raise: a store upload then fails and
    keeps nothing."""
    hasher = hashlib.sha256()
    async for chunk in body:
        hasher.update(chunk)
        yield chunk
    if hasher.hexdigest() != sha256:
        raise InvalidRequestError(
            f"the body hashes to sha256:{hasher.hexdigest()}, not the sha256:{sha256} announced",
            param="sha256",
            code="digest_mismatch",
        )
    if still_held is not None:
        await asyncio.to_thread(still_held)
