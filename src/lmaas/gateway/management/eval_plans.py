"""Checking an eval run's request (``POST /v1/evals/{id}/runs``) before anything is written.

Creating a run checks everything that can be checked before it runs, with nothing written on
a 4xx: the data source (``jsonl`` items as given, or ``completions`` that sample a served model),
every item against the eval's item schema (naming the line or index), the message templates,
that the items carry a sample when a grader needs one and nothing makes it, and that every
model asked (the run's, the graders') is served and can do what it is asked. Then a job of
kind ``eval_run`` is queued (``group_id``: the eval) and the runner woken. A run against a
store version (``smollm2-135m-instruct``, ``name:alias``, ``name:3``) remembers which version
it evaluated; its figures are attached to that version when it completes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import jsonschema

from lmaas.config_jobs import JobSettings
from lmaas.engine.directory import EngineDirectory
from lmaas.errors import InvalidRequestError, NotFoundError
from lmaas.jobs.batch_lines import numbered_lines
from lmaas.jobs.eval_items import ROLES, ItemError, parse_line, split_entry
from lmaas.jobs.eval_store import EvalInfo
from lmaas.jobs.eval_templates import check_template, references, single_reference
from lmaas.jobs.graders import models_of, parse_criteria, templates_of
from lmaas.protocol.deploy import DeploymentControl
from lmaas.protocol.evals import (
    GraderSpec,
    LabelGrader,
    PerplexityGrader,
    TextSimilarityGrader,
)
from lmaas.protocol.tasks import CLASSIFY, EMBED, GENERATE, SCORE
from lmaas.store.files import FileStore, Viewer

MAX_INLINE_ITEMS: Final = 10_000
_SAMPLING: Final = {
    "temperature": (int, float),
    "top_p": (int, float),
    "seed": (int,),
    "max_completion_tokens": (int,),
    "response_format": (dict,),
}


@dataclass(frozen=True, slots=True)
class Plan:
    model: str | None
    model_version: dict[str, Any] | None
    items: int
    file_id: str | None


def _bad(message: str, param: str, code: str | None = None) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def _needs_sample(specs: list[GraderSpec]) -> bool:
    return any(
        path.startswith("sample")
        for spec in specs
        for template in templates_of(spec).values()
        for path in references(template)
    )


class RunPlanner:
    """Checks a run's request against its eval and what is served."""

    def __init__(
        self,
        engines: EngineDirectory,
        deployments: DeploymentControl | None,
        files: FileStore,
        settings: JobSettings,
    ) -> None:
        self._engines = engines
        self._deployments = deployments
        self._files = files
        self._settings = settings

    def plan(self, viewer: Viewer, info: EvalInfo, source: dict[str, Any]) -> Plan:
        kind = source.get("type")
        if kind not in ("jsonl", "completions"):
            raise _bad(
                f"data_source.type {kind!r} is not supported; lmaas runs 'jsonl' (items with "
                "their samples) and 'completions' (samples from a served model)",
                "data_source.type",
            )
        specs = parse_criteria(info.testing_criteria)
        schema = info.data_source_config["item_schema"]
        fields = schema.get("properties") if isinstance(schema, dict) else None
        item_fields = frozenset(fields) if isinstance(fields, dict) else None
        model = None
        if kind == "completions":
            model = self._check_completions(source, item_fields)
        needs_sample = kind == "jsonl" and _needs_sample(specs)
        items, file_id = self._check_items(viewer, source.get("source"), schema, needs_sample)
        self._check_grader_models(specs, model)
        return Plan(model, self._version_of(model, specs), items, file_id)

    # -- the parts ------------------------------------------------------------------------------

    def _check_completions(self, source: dict[str, Any], item_fields: frozenset[str] | None) -> str:
        model = source.get("model")
        if not isinstance(model, str) or not model:
            raise _bad("a completions data source needs a model", "data_source.model")
        self._served(model, GENERATE, "data_source.model")
        messages = source.get("input_messages")
        if not isinstance(messages, dict) or messages.get("type") not in (
            "template",
            "item_reference",
        ):
            raise _bad(
                "data_source.input_messages must be {'type': 'template', 'template': [...]} or "
                "{'type': 'item_reference', 'item_reference': 'item.<field>'}",
                "data_source.input_messages",
            )
        if messages["type"] == "item_reference":
            self._check_reference(messages.get("item_reference"), item_fields)
        else:
            self._check_template_messages(messages.get("template"), item_fields)
        sampling = source.get("sampling_params") or {}
        if not isinstance(sampling, dict):
            raise _bad("sampling_params must be an object", "data_source.sampling_params")
        for field, value in sampling.items():
            types = _SAMPLING.get(field)
            if types is None and value is not None:
                raise _bad(
                    f"sampling_params.{field} is not supported; lmaas takes {', '.join(_SAMPLING)}",
                    f"data_source.sampling_params.{field}",
                )
            if types and (isinstance(value, bool) or not isinstance(value, types)):
                raise _bad(
                    f"sampling_params.{field} has the wrong type",
                    f"data_source.sampling_params.{field}",
                )
        return model

    @staticmethod
    def _check_reference(reference: Any, item_fields: frozenset[str] | None) -> None:
        param = "data_source.input_messages.item_reference"
        if not isinstance(reference, str):
            raise _bad("item_reference must be a string like 'item.messages'", param)
        path = single_reference(reference) or reference.strip()
        problems = check_template("{{" + path + "}}", item_fields=item_fields, sample=False)
        if problems or not path.startswith("item."):
            raise _bad(f"item_reference: {problems[0] if problems else 'name item.<field>'}", param)

    @staticmethod
    def _check_template_messages(template: Any, item_fields: frozenset[str] | None) -> None:
        param = "data_source.input_messages.template"
        if not isinstance(template, list) or not template:
            raise _bad("input_messages.template must be a non-empty list of messages", param)
        for index, message in enumerate(template):
            where = f"{param}[{index}]"
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise _bad(
                    f"{where}: each message needs a role in {sorted(ROLES)}", f"{where}.role"
                )
            content = message.get("content")
            text = content.get("text") if isinstance(content, dict) else content
            if not isinstance(text, str):
                raise _bad(f"{where}.content must be text", f"{where}.content")
            problems = check_template(text, item_fields=item_fields, sample=False)
            if problems:
                raise _bad(
                    f"{where}.content: {problems[0]}", f"{where}.content", "invalid_template"
                )

    def _check_items(
        self, viewer: Viewer, source: Any, schema: dict[str, Any], needs_sample: bool
    ) -> tuple[int, str | None]:
        validator = jsonschema.validators.validator_for(schema)(schema)
        if not isinstance(source, dict) or source.get("type") not in ("file_content", "file_id"):
            raise _bad(
                "data_source.source must be {'type': 'file_content', 'content': [...]} or "
                "{'type': 'file_id', 'id': ...}",
                "data_source.source",
            )
        if source["type"] == "file_content":
            content = source.get("content")
            if not isinstance(content, list) or not content or len(content) > MAX_INLINE_ITEMS:
                raise _bad(
                    f"source.content must be a list of 1 to {MAX_INLINE_ITEMS} items",
                    "data_source.source.content",
                )
            for index, entry in enumerate(content):
                where = f"data_source.source.content[{index}]"
                self._check_item(validator, entry, None, where, needs_sample)
            return len(content), None
        return self._check_file(viewer, source.get("id"), validator, needs_sample)

    def _check_file(
        self, viewer: Viewer, file_id: Any, validator: Any, needs_sample: bool
    ) -> tuple[int, str]:
        param = "data_source.source.id"
        if not isinstance(file_id, str):
            raise _bad("source.id must be a file id", param)
        try:
            file, handle = self._files.open(file_id, viewer)
        except NotFoundError as exc:
            raise NotFoundError(exc.message, param=param, code=exc.code) from None
        with handle:
            if file.purpose != "evals":
                raise _bad(
                    f"file {file.id} has purpose {file.purpose!r}; an eval run reads a file "
                    "uploaded with purpose 'evals'",
                    param,
                    "invalid_file_purpose",
                )
            count = 0
            for number, raw in numbered_lines(handle):
                count += 1
                if count > self._settings.max_batch_lines:
                    raise _bad(
                        f"an eval file may have at most {self._settings.max_batch_lines} items",
                        param,
                    )
                self._check_item(validator, None, raw, f"line {number}", needs_sample, param)
        if count == 0:
            raise _bad(f"file {file.id} has no items", param)
        return count, file.id

    @staticmethod
    def _check_item(
        validator: Any,
        entry: Any,
        raw: bytes | None,
        where: str,
        needs_sample: bool,
        param: str | None = None,
    ) -> None:
        try:
            item, sample = parse_line(raw) if raw is not None else split_entry(entry)
        except ItemError as exc:
            raise _bad(f"{where}: {exc.message}", param or where, "invalid_item") from None
        error = next(iter(validator.iter_errors(item)), None)
        if error is not None:
            at = "/".join(str(p) for p in error.absolute_path) or "(the item)"
            raise _bad(
                f"{where}: the item does not match the eval's item_schema at {at}: "
                f"{error.message[:300]}",
                param or where,
                "invalid_item",
            )
        if needs_sample and sample is None:
            raise _bad(
                f"{where}: a grader refers to the sample, and this jsonl item has none (give "
                "each item a sample, or use a completions data source)",
                param or where,
                "invalid_item",
            )

    def _check_grader_models(self, specs: list[GraderSpec], model: str | None) -> None:
        for index, spec in enumerate(specs):
            asked = models_of(spec, model)
            field = "embedding_model" if isinstance(spec, TextSimilarityGrader) else "model"
            param = f"testing_criteria[{index}].{field}"
            if isinstance(spec, PerplexityGrader | LabelGrader) and asked is None:
                raise _bad(
                    f"grader {spec.name!r} needs a model: name one, or run a completions data "
                    "source (its model is the default)",
                    param,
                )
            if asked is None:
                continue
            if isinstance(spec, TextSimilarityGrader):
                self._served(asked, EMBED, param)
            elif isinstance(spec, LabelGrader) and not spec.candidate_labels:
                self._served(asked, CLASSIFY, param)
            else:
                self._served(asked, SCORE, param)

    def _served(self, model: str, capability: str, param: str) -> None:
        engine = self._engines.lookup(model)
        if engine is None:
            raise NotFoundError(
                f"model {model!r} is not served (deploy it, or name a served model)",
                param=param,
                code="model_not_found",
            )
        info = engine.info
        if info is not None and capability not in info.capabilities:
            raise _bad(
                f"model {model!r} cannot do what this asks ({capability}); it does "
                f"{', '.join(info.capabilities)}",
                param,
                "model_not_supported",
            )

    def _version_of(self, model: str | None, specs: list[GraderSpec]) -> dict[str, Any] | None:
        """The store version a run evaluates: its model's, or for a jsonl run the one model
        its perplexity and label graders share."""
        if model is None:
            asked = {
                spec.model for spec in specs if isinstance(spec, PerplexityGrader | LabelGrader)
            }
            model = asked.pop() if len(asked) == 1 else None
        if model is None or self._deployments is None:
            return None
        engine = self._engines.lookup(model)
        if engine is None:
            return None
        try:
            deployment = self._deployments.get(engine.name)
        except NotFoundError:
            return None
        if deployment.model is None or deployment.version is None:
            return None
        return {"model": deployment.model, "number": deployment.version}
