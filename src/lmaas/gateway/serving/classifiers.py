"""POST /admin/classifiers: train a linear-head classifier on a served embedding model, store
it as its own model (a Hugging Face folder: the embedding model's files plus the head) and
deploy it, all in one call."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lmaas.config import Limits
from lmaas.engine.client import EngineClient
from lmaas.errors import ConflictError, InvalidRequestError, ServiceUnavailableError
from lmaas.gateway.serving.common import engine_request_id, resolve_engine
from lmaas.jobs.linear_head import HEAD_FILE, HEAD_WEIGHTS, LinearHead, fit_linear_head
from lmaas.protocol.deploy import DeploymentControl, DeploymentCreate
from lmaas.protocol.tasks import EMBED, TaskRequest
from lmaas.protocol.understanding import ClassifierTrainRequest
from lmaas.store.catalog import validate_model_name
from lmaas.store.model_store import ModelStore


class ClassifierTrainer:
    def __init__(
        self,
        engines: dict[str, EngineClient],
        limits: Limits,
        store: ModelStore,
        deployments: DeploymentControl | None,
    ) -> None:
        self.engines = engines
        self.limits = limits
        self.store = store
        self.deployments = deployments

    async def train(self, body: ClassifierTrainRequest, request_id: str) -> dict[str, Any]:
        validate_model_name(body.name)
        engine = resolve_engine(self.engines, body.model)
        base = self._base_folder(engine)
        texts, labels = self._examples(body)
        started = time.monotonic()
        vectors = await self._embed(engine, request_id, texts)
        try:
            head = await asyncio.to_thread(fit_linear_head, vectors, labels)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="examples") from exc
        version = await asyncio.to_thread(self._store, body, base, head)
        trained_s = time.monotonic() - started
        out: dict[str, Any] = {
            "object": "classifier",
            "name": body.name,
            "model": body.model,
            "version": version.number,
            "labels": head.labels,
            "examples": len(texts),
            "train_accuracy": head.train_accuracy,
            "train_seconds": round(trained_s, 3),
            "deployment": None,
        }
        if body.deploy and self.deployments is not None:
            out["deployment"] = await self._deploy(body.name)
        return out

    def _base_folder(self, engine: EngineClient) -> Path:
        info = engine.info
        if info is None:
            raise ServiceUnavailableError(f"model '{engine.name}' is still loading")
        folder = Path(info.path)
        if EMBED not in info.capabilities or info.backend != "transformers" or not folder.is_dir():
            raise InvalidRequestError(
                f"model '{engine.name}' is not a Hugging Face embedding model; a head is "
                "trained on one (e.g. all-minilm-l6-v2)",
                param="model",
            )
        if (folder / HEAD_FILE).exists():
            raise InvalidRequestError(
                f"model '{engine.name}' is itself a trained classifier; train on its "
                "embedding model",
                param="model",
            )
        return folder

    def _examples(self, body: ClassifierTrainRequest) -> tuple[list[str], list[str]]:
        limit = self.limits.max_train_examples
        if len(body.examples) > limit:
            raise InvalidRequestError(
                f"{len(body.examples)} examples given; at most {limit}", param="examples"
            )
        texts = [e.text for e in body.examples]
        labels = [e.label for e in body.examples]
        if len(set(labels)) < 2:
            raise InvalidRequestError(
                "examples need at least two different labels", param="examples"
            )
        return texts, labels

    async def _embed(
        self, engine: EngineClient, request_id: str, texts: list[str]
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        step = self.limits.max_inputs
        chunks = [
            TaskRequest(
                request_id=engine_request_id(request_id, i),
                kind="embed",
                texts=texts[start : start + step],
                truncate=True,
            )
            for i, start in enumerate(range(0, len(texts), step))
        ]
        results = await asyncio.gather(*(engine.run_task(c) for c in chunks))
        rows = [
            np.frombuffer(r.embeddings or b"", dtype="<f4").reshape(-1, r.dim or 1) for r in results
        ]
        return np.concatenate(rows).astype(np.float32)

    def _store(self, body: ClassifierTrainRequest, base: Path, head: LinearHead) -> Any:
        """The base model's files plus the head, imported as one folder. The files are hard
        links where the file system allows (the store dedupes by content either way), copies
        otherwise; never symlinks, which an import refuses."""
        with tempfile.TemporaryDirectory(prefix="lmaas-head-", dir=self.store.blobs.root) as tmp:
            root = Path(tmp)
            for path in base.rglob("*"):
                if path.is_file() and path.name not in (HEAD_FILE, HEAD_WEIGHTS):
                    target = root / path.relative_to(base)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(path.resolve(), target)
                    except OSError:
                        shutil.copyfile(path.resolve(), target)
            head.save(root, base_model=body.model)
            return self.store.import_folder(
                body.name,
                root,
                source=f"trained:linear-head:{body.model}",
                description=body.description
                or f"linear head on {body.model}: {', '.join(head.labels)}",
            )

    async def _deploy(self, name: str) -> dict[str, Any]:
        assert self.deployments is not None
        try:
            out = await self.deployments.create(DeploymentCreate(model=name, name=name, wait=True))
        except ConflictError:
            # Already deployed following `latest`: the new version rolls it.
            await self.deployments.on_aliases_changed(name)
            out = self.deployments.get(name)
        return out.model_dump(mode="json")
