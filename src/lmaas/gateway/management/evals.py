"""The Evals API's evals (``/v1/evals``): create, list, retrieve, update, delete.

An eval is its item schema (``data_source_config`` of type ``custom``) and its graders
(``testing_criteria``), checked at creation: the schema must be a JSON schema, each grader a
kind lmaas runs, each template may refer only to the item's declared properties and (with
``include_sample_schema``) to the sample. Runs are in :mod:`lmaas.gateway.management.eval_runs`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import jsonschema

from lmaas.errors import ConflictError, InvalidRequestError
from lmaas.gateway.management.batches import check_metadata
from lmaas.gateway.management.files import viewer_of
from lmaas.jobs.eval_store import EvalInfo, EvalStore
from lmaas.jobs.evals import KIND as RUN_KIND
from lmaas.jobs.graders import check_criteria, parse_criteria
from lmaas.jobs.store import FINISHED, STATUSES, JobStore
from lmaas.keys import KeyInfo
from lmaas.protocol.evals import Eval, EvalCreate, EvalDeleted, EvalList, EvalUpdate
from lmaas.store.files import Viewer

MAX_LIST_LIMIT: Final = 100
UNFINISHED: Final = tuple(s for s in STATUSES if s not in FINISHED)
MAX_SCHEMA_BYTES: Final = 64 * 1024
# What a sample holds, as the eval's schema shows it.
SAMPLE_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "output_text": {"type": "string"},
        "output_json": {},
        "finish_reason": {"type": ["string", "null"]},
        "model": {"type": ["string", "null"]},
        "usage": {"type": "object"},
        "choices": {"type": "array"},
        "output": {"type": "array"},
    },
}


def item_fields(item_schema: dict[str, Any]) -> frozenset[str] | None:
    """The properties an item may have, or None when the schema does not list them."""
    properties = item_schema.get("properties")
    return frozenset(properties) if isinstance(properties, dict) else None


def eval_object(info: EvalInfo) -> Eval:
    config = info.data_source_config
    properties: dict[str, Any] = {"item": config["item_schema"]}
    required = ["item"]
    if config.get("include_sample_schema"):
        properties["sample"] = SAMPLE_SCHEMA
        required.append("sample")
    return Eval(
        id=info.id,
        name=info.name,
        data_source_config={
            "type": "custom",
            "schema": {"type": "object", "properties": properties, "required": required},
        },
        testing_criteria=info.testing_criteria,
        created_at=int(info.created_at.timestamp()),
        metadata=info.metadata,
    )


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """The stored form of ``data_source_config`` (400 naming the field)."""
    kind = config.get("type")
    if kind != "custom":
        raise InvalidRequestError(
            f"data_source_config.type {kind!r} is not supported: lmaas evals take items you "
            "give (type 'custom' with an item_schema)",
            param="data_source_config.type",
        )
    schema = config.get("item_schema")
    if not isinstance(schema, dict):
        raise InvalidRequestError(
            "data_source_config.item_schema must be a JSON schema object",
            param="data_source_config.item_schema",
        )
    if len(repr(schema)) > MAX_SCHEMA_BYTES:
        raise InvalidRequestError(
            f"data_source_config.item_schema may be at most {MAX_SCHEMA_BYTES} bytes",
            param="data_source_config.item_schema",
        )
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequestError(
            f"data_source_config.item_schema is not a valid JSON schema: {exc.message}",
            param="data_source_config.item_schema",
        ) from None
    include = config.get("include_sample_schema", False)
    if not isinstance(include, bool):
        raise InvalidRequestError(
            "data_source_config.include_sample_schema must be a boolean",
            param="data_source_config.include_sample_schema",
        )
    return {"type": "custom", "item_schema": schema, "include_sample_schema": include}


class EvalManagement:
    """The ``/v1/evals`` operations on evals; kept on ``app.state``."""

    def __init__(self, evals: EvalStore, jobs: JobStore) -> None:
        self._evals = evals
        self._jobs = jobs

    @property
    def store(self) -> EvalStore:
        return self._evals

    async def create(self, key: KeyInfo | None, body: EvalCreate) -> Eval:
        config = check_config(body.data_source_config)
        specs = parse_criteria(body.testing_criteria)
        check_criteria(
            specs,
            item_fields=item_fields(config["item_schema"]),
            sample=config["include_sample_schema"],
        )
        metadata = check_metadata(body.metadata)
        info = await asyncio.to_thread(
            self._evals.create,
            owner_key_id=viewer_of(key).key_id,
            name=body.name or "eval",
            data_source_config=config,
            testing_criteria=[s.model_dump(exclude_none=True) for s in specs],
            metadata=metadata,
        )
        return eval_object(info)

    async def retrieve(self, key: KeyInfo | None, eval_id: str) -> Eval:
        return eval_object(await asyncio.to_thread(self._evals.get, eval_id, viewer_of(key)))

    async def list(
        self, key: KeyInfo | None, *, after: str | None, limit: int, order: str
    ) -> EvalList:
        page = await asyncio.to_thread(
            self._evals.list,
            viewer_of(key),
            after=after,
            limit=limit,
            newest_first=order == "desc",
        )
        data = [eval_object(e) for e in page.evals]
        return EvalList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=page.has_more,
        )

    async def update(self, key: KeyInfo | None, eval_id: str, body: EvalUpdate) -> Eval:
        metadata = check_metadata(body.metadata)
        info = await asyncio.to_thread(
            self._evals.update, eval_id, viewer_of(key), name=body.name, metadata=metadata
        )
        return eval_object(info)

    async def delete(self, key: KeyInfo | None, eval_id: str) -> EvalDeleted:
        """Delete the eval; its runs that have not finished are cancelled (they stay in
        ``/admin/jobs``)."""
        await asyncio.to_thread(self._delete, viewer_of(key), eval_id)
        return EvalDeleted(eval_id=eval_id)

    def _delete(self, viewer: Viewer, eval_id: str) -> None:
        self._evals.get(eval_id, viewer)
        after = None
        while True:
            page = self._jobs.list(
                viewer, kind=RUN_KIND, group_id=eval_id, statuses=UNFINISHED, after=after, limit=100
            )
            for job in page.jobs:
                with contextlib.suppress(ConflictError):
                    self._jobs.cancel(job.id, viewer, kind=RUN_KIND)
            if not page.has_more:
                break
            after = page.jobs[-1].id
        self._evals.delete(eval_id, viewer)
