"""Quantizing a store version (``POST /admin/models/{name}/versions/{ref}/quantize``): a job of
kind ``quantize`` run by the job runner (:mod:`lmaas.jobs.quantize`), shown by ``/admin/jobs``.

Creating one checks the source, the types and the held-out file first
(:mod:`lmaas.jobs.quantize_input`) and writes nothing on a 4xx. The runner moves the model's
aliases (``q8_0``, ...) in the catalog; :meth:`QuantizeManagement.announce_finished` (polled
beside the app) tells the deployment manager once a job has ended, so that deployments that
follow such an alias roll to the new version.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from lmaas.gateway.management.jobs import job_object
from lmaas.jobs import fine_tune_input, quantize_input
from lmaas.jobs.store import CANCELLED, COMPLETED, JobInfo, JobStore
from lmaas.keys import KeyInfo
from lmaas.protocol.deploy import DeploymentControl
from lmaas.protocol.jobs import JobObject
from lmaas.protocol.quantize import QuantizeBody
from lmaas.store.catalog import parse_reference
from lmaas.store.files import FileStore, Viewer
from lmaas.store.model_store import ModelStore

log = logging.getLogger(__name__)
_ANNOUNCED: Final = "aliases_announced"


class QuantizeManagement:
    def __init__(
        self,
        jobs: JobStore,
        files: FileStore,
        store: ModelStore,
        deployments: DeploymentControl | None,
        *,
        on_queued: Any = lambda: None,
    ) -> None:
        self._jobs = jobs
        self._files = files
        self._store = store
        self._deployments = deployments
        self._on_queued = on_queued

    async def create(self, key: KeyInfo, name: str, ref: str, body: QuantizeBody) -> JobObject:
        job = await asyncio.to_thread(self._create, key, name, ref, body)
        self._on_queued()
        return job_object(job)

    def _create(self, key: KeyInfo, name: str, ref: str, body: QuantizeBody) -> JobInfo:
        version = self._store.catalog.get_version(name, parse_reference(f"{name}:{ref}")[1])
        quantize_input.check_source(version)
        types = quantize_input.check_types(body.types)
        viewer = Viewer(key.id, admin=True)
        eval_file = None
        if body.eval_file is not None:
            eval_file = fine_tune_input.check_file(self._files, viewer, body.eval_file, "eval_file")
        given = {
            "model": version.model,
            "number": version.number,
            "source_quantization": version.quantization,
            "types": types,
            "eval_file": eval_file.id if eval_file else None,
        }
        return self._jobs.create(
            quantize_input.KIND,
            id_prefix=quantize_input.ID_PREFIX,
            owner_key_id=key.id,
            input=given,
            input_file_id=eval_file.id if eval_file else None,
            total=len(types) + 1,
            message=f"queued: {', '.join(types)} of {version.model}:{version.number}",
        )

    # -- telling the deployments ----------------------------------------------------------------

    async def announce_finished(self) -> None:
        """Tell the deployment manager about the aliases of every ended job not told yet."""
        if self._deployments is None:
            return
        page = await asyncio.to_thread(
            self._jobs.list,
            Viewer(None, admin=True),
            kind=quantize_input.KIND,
            statuses=[COMPLETED, CANCELLED],
            limit=50,
        )
        for job in page.jobs:
            result = job.result or {}
            if result.get(_ANNOUNCED) is not False:
                continue
            if result.get("versions"):
                await self._deployments.on_aliases_changed(str(result["model"]))
            await asyncio.to_thread(self._jobs.merge_result, job.id, {_ANNOUNCED: True})

    async def run_announcer(self, interval: float = 2.0) -> None:
        while True:
            try:
                await self.announce_finished()
            except Exception:
                log.exception("announcing quantized versions failed")
            await asyncio.sleep(interval)
