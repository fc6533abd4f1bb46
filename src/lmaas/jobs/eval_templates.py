"""The ``{{ item.x }}`` / ``{{ sample.output_text }}`` templates of evals, as OpenAI writes them.

A template is text with references in double braces. A reference names a namespace
(``item``: the data source item; ``sample``: what the model answered) and a dotted path into it
(``item.answer``, ``item.meta.lang``, ``item.choices.0``). Rendering puts the value's text in
place (strings as they are, anything else as compact JSON). A template that is one reference
and nothing else can also be *resolved* to the value itself (``input_messages`` of type
``item_reference``). Pure functions; errors name what is missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

NAMESPACES: Final = ("item", "sample")
# What a sample holds (lmaas fills all of them for a completions run; a jsonl run's items bring
# their own sample).
SAMPLE_FIELDS: Final = frozenset(
    {"output_text", "output_json", "finish_reason", "model", "usage", "choices", "output"}
)
_REFERENCE: Final = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_PATH: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*")
MAX_TEMPLATE: Final = 100_000


class TemplateError(ValueError):
    """A template that cannot be rendered: ``reference`` is what is wrong."""

    def __init__(self, message: str, reference: str) -> None:
        super().__init__(message)
        self.message = message
        self.reference = reference


def references(template: str) -> Iterator[str]:
    """The references of ``template`` (``item.answer``, ...), each checked for syntax."""
    for match in _REFERENCE.finditer(template):
        path = match.group(1)
        if not _PATH.fullmatch(path):
            raise TemplateError(f"{{{{{path}}}}} is not a reference like {{{{item.field}}}}", path)
        namespace = path.split(".", 1)[0]
        if namespace not in NAMESPACES:
            raise TemplateError(
                f"{{{{{path}}}}} refers to {namespace!r}; a template may refer to "
                "'item' (the data source item) or 'sample' (the model's answer)",
                path,
            )
        yield path


def check_template(template: str, *, item_fields: frozenset[str] | None, sample: bool) -> list[str]:
    """Problems of ``template`` known before any item is seen: bad syntax, a namespace other
    than item and sample, ``sample`` where there is none, an ``item`` field the item schema
    does not declare (``item_fields`` None: the schema declares no properties)."""
    if len(template) > MAX_TEMPLATE:
        return [f"a template may be at most {MAX_TEMPLATE} characters"]
    problems: list[str] = []
    try:
        paths = list(references(template))
    except TemplateError as exc:
        return [exc.message]
    for path in paths:
        namespace, _, rest = path.partition(".")
        field = rest.split(".", 1)[0]
        if namespace == "sample":
            if not sample:
                problems.append(
                    f"{{{{{path}}}}}: there is no sample here (set include_sample_schema, or "
                    "use a data source that makes samples)"
                )
            elif field and field not in SAMPLE_FIELDS:
                problems.append(f"{{{{{path}}}}}: a sample has {', '.join(sorted(SAMPLE_FIELDS))}")
        elif not field:
            problems.append(f"{{{{{path}}}}}: name a field of the item, like {{{{item.field}}}}")
        elif item_fields is not None and field not in item_fields:
            known = ", ".join(sorted(item_fields)) or "none"
            problems.append(
                f"{{{{{path}}}}}: the item schema has no property {field!r} (it has {known})"
            )
    return problems


def resolve(path: str, scope: Mapping[str, Any]) -> Any:
    """The value ``path`` (``item.a.b``) names in ``scope`` (``{"item": ..., "sample": ...}``)."""
    value: Any = scope
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"{{{{{path}}}}}: {part!r} is missing", path)
    return value


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def render(template: str, scope: Mapping[str, Any]) -> str:
    """``template`` with every reference replaced by its value's text."""
    return _REFERENCE.sub(lambda m: as_text(resolve(m.group(1).strip(), scope)), template)


def single_reference(template: str) -> str | None:
    """The reference if ``template`` is exactly one reference (``{{item.messages}}``)."""
    match = _REFERENCE.fullmatch(template.strip())
    return match.group(1).strip() if match else None


def resolve_reference(reference: str, scope: Mapping[str, Any]) -> Any:
    """An ``item_reference`` (``item.messages`` or ``{{item.messages}}``) to its value."""
    path = single_reference(reference) or reference.strip()
    list(references("{{" + path + "}}"))  # syntax and namespace
    return resolve(path, scope)
