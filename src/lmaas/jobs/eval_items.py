"""The items of an eval run: reading them, the chat request a completions run makes of each,
the sample it gets back, the output item it ends as, and the run's figures. Pure functions.

An item line is ``{"item": {...}, "sample": {...}?}`` (OpenAI's eval JSONL). A completions run
renders ``input_messages`` over the item (a ``template`` of messages, or an
``item_reference`` to a list of messages in the item) and asks the model with
``sampling_params``; the answer becomes the item's ``sample`` (``output_text``,
``output_json``, ``finish_reason``, ...) that graders refer to as ``{{sample.output_text}}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from lmaas.jobs.eval_templates import TemplateError, render, resolve_reference
from lmaas.jobs.graders import criterion_metrics
from lmaas.protocol.evals import GraderSpec

ROLES: Final = frozenset({"system", "developer", "user", "assistant"})
# sampling_params (OpenAI) -> the chat completion request's fields
SAMPLING: Final = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "max_completion_tokens": "max_tokens",
    "response_format": "response_format",
}
DEFAULT_MAX_TOKENS: Final = 256


class ItemError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_line(raw: bytes) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(item, sample or None) of one line of an eval file."""
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ItemError("invalid_json", f"not JSON ({exc})") from None
    return split_entry(value)


def split_entry(value: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    if not isinstance(value, dict) or not isinstance(value.get("item"), dict):
        raise ItemError("invalid_item", 'a line must be {"item": {...}} (and an optional sample)')
    sample = value.get("sample")
    if sample is not None and not isinstance(sample, dict):
        raise ItemError("invalid_item", "sample must be a JSON object")
    return value["item"], sample


def _content_text(content: Any) -> str:
    """A template message's content: a string, an ``input_text``/``output_text`` part, or a
    list of such parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping) and isinstance(content.get("text"), str):
        return str(content["text"])
    if isinstance(content, list):
        return "".join(_content_text(part) for part in content)
    raise ItemError("invalid_message", "a message's content must be text")


def messages_for(
    input_messages: Mapping[str, Any], scope: Mapping[str, Any]
) -> list[dict[str, str]]:
    """The chat messages of one item."""
    try:
        if input_messages.get("type") == "item_reference":
            found = resolve_reference(str(input_messages["item_reference"]), scope)
            if isinstance(found, str):
                return [{"role": "user", "content": found}]
            if not isinstance(found, list):
                raise ItemError(
                    "invalid_message", "item_reference must name a list of messages or a string"
                )
            entries: Iterable[Any] = found
            fill = False
        else:
            entries, fill = input_messages["template"], True
        messages = []
        for entry in entries:
            if not isinstance(entry, Mapping) or entry.get("role") not in ROLES:
                raise ItemError("invalid_message", f"each message needs a role in {sorted(ROLES)}")
            text = _content_text(entry.get("content"))
            messages.append(
                {"role": str(entry["role"]), "content": render(text, scope) if fill else text}
            )
        return messages
    except TemplateError as exc:
        raise ItemError("missing_field", exc.message) from None


def chat_body(
    model: str, messages: list[dict[str, str]], sampling: Mapping[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "priority": "batch"}
    for given, field in SAMPLING.items():
        if sampling.get(given) is not None:
            body[field] = sampling[given]
    body.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    return body


def sample_of(
    answer: Mapping[str, Any], body: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what graders see as ``sample``, the output item's ``sample``) of a chat answer."""
    choice = (answer.get("choices") or [{}])[0]
    text = str((choice.get("message") or {}).get("content") or "")
    usage = answer.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = None
    usage_out = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cached_tokens": 0,
    }
    scope = {
        "output_text": text,
        "output_json": parsed,
        "finish_reason": choice.get("finish_reason"),
        "model": answer.get("model"),
        "usage": usage_out,
        "choices": answer.get("choices") or [],
        "output": [{"role": "assistant", "content": text}],
    }
    shown = {
        "input": body["messages"],
        "output": [{"role": "assistant", "content": text}],
        "finish_reason": choice.get("finish_reason"),
        "model": answer.get("model"),
        "usage": usage_out,
        "error": None,
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "seed": body.get("seed"),
        "max_completion_tokens": body.get("max_tokens"),
    }
    return scope, shown


def failed_sample(body: Mapping[str, Any] | None, code: str, message: str) -> dict[str, Any]:
    return {
        "input": (body or {}).get("messages", []),
        "output": [],
        "finish_reason": None,
        "model": (body or {}).get("model"),
        "usage": {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 0,
            "cached_tokens": 0,
        },
        "error": {"code": code, "message": message},
    }


def item_status(results: Sequence[Mapping[str, Any]], sample: Mapping[str, Any] | None) -> str:
    if (sample is not None and sample.get("error")) or any("error" in r for r in results):
        return "error"
    return "pass" if all(r.get("passed") for r in results) else "fail"


def summarize(specs: Sequence[GraderSpec], outputs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``result_counts`` and ``per_testing_criteria_results`` of a run's output items."""
    counts = {"total": 0, "passed": 0, "failed": 0, "errored": 0}
    per: list[list[Mapping[str, Any]]] = [[] for _ in specs]
    key = {"pass": "passed", "fail": "failed", "error": "errored"}
    for output in outputs:
        counts["total"] += 1
        counts[key[str(output["status"])]] += 1
        by_name = {r.get("name"): r for r in output.get("results", [])}
        for index, spec in enumerate(specs):
            result = by_name.get(spec.name)
            if result is not None:
                per[index].append(result)
    criteria = []
    for spec, results in zip(specs, per, strict=True):
        graded = [r for r in results if "error" not in r]
        passed = sum(1 for r in graded if r.get("passed"))
        criteria.append(
            {
                "testing_criteria": spec.name,
                "passed": passed,
                "failed": len(results) - passed,
                "metrics": criterion_metrics(spec, results),
            }
        )
    return {"result_counts": counts, "per_testing_criteria_results": criteria}
