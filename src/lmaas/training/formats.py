"""Training examples read from JSONL, and the checks a training file must pass.

Three formats, one per file:

- chat: ``{"messages": [{"role": ..., "content": ...}, ...]}``; the model learns the assistant
  turns only (an assistant message with ``"weight": 0`` is context, not learned, as in OpenAI's
  fine-tuning format);
- prompt/completion: ``{"prompt": "...", "completion": "..."}``; the model learns the completion;
- text: ``{"text": "..."}`` (an lmaas extension, continued pretraining); the model learns all of it.

This module needs no model and imports no torch: :func:`validate_file` can check a file when a
job is created. Line numbers count every line of the file from 1, blank ones included (they are
skipped), as an editor shows them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Format = Literal["chat", "prompt_completion", "text"]
FORMAT_NAMES: Final[dict[Format, str]] = {
    "chat": "chat (messages)",
    "prompt_completion": "prompt/completion",
    "text": "text",
}
ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_REPORTED: Final = 5


class TrainingDataError(ValueError):
    """A training file that cannot be trained on. ``line`` is the 1-based line at fault, or
    None when the file as a whole is (an empty file)."""

    def __init__(self, line: int | None, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(message if line is None else f"line {line}: {message}")


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    learn: bool  # an assistant turn the loss covers


@dataclass(frozen=True, slots=True)
class ChatExample:
    line: int
    messages: tuple[Message, ...]
    format: Format = "chat"


@dataclass(frozen=True, slots=True)
class PromptCompletionExample:
    line: int
    prompt: str
    completion: str
    format: Format = "prompt_completion"


@dataclass(frozen=True, slots=True)
class TextExample:
    line: int
    text: str
    format: Format = "text"


Example = ChatExample | PromptCompletionExample | TextExample


@dataclass(slots=True)
class DataReport:
    """What :func:`validate_file` found: ``ok`` when ``errors`` is empty."""

    lines: int = 0  # every line read, blank ones included
    examples: int = 0  # lines that are valid examples
    format: Format | None = None  # the file's format, from its first example
    errors: list[TrainingDataError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One sentence naming the first errors (for an API error message)."""
        return "; ".join(str(e) for e in self.errors)


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ValueError(f"{where}[{i}] must be a text part; only text can be trained on")
            text = part.get("text")
            if not isinstance(text, str):
                raise ValueError(f"{where}[{i}].text must be a string")
            texts.append(text)
        return "".join(texts)
    raise ValueError(f"{where} must be a string or a list of text parts")


def _message(raw: Any, i: int) -> Message:
    where = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a JSON object")
    role = raw.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role must be one of {', '.join(sorted(ROLES))}")
    content = _content(raw.get("content"), f"{where}.content")
    weight = raw.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise ValueError(f"{where}.weight must be 0 or 1")
    if "weight" in raw and role != "assistant":
        raise ValueError(f"{where}.weight is allowed on assistant messages only")
    learn = role == "assistant" and weight == 1
    if learn and not content:
        raise ValueError(f"{where} is an assistant message with no text content to learn")
    return Message(role=str(role), content=content, learn=learn)


def _chat(line: int, messages: Any) -> ChatExample:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    parsed = tuple(_message(m, i) for i, m in enumerate(messages))
    if not any(m.role == "assistant" for m in parsed):
        raise ValueError("the conversation has no assistant turn (what the model should learn)")
    if not any(m.learn for m in parsed):
        raise ValueError("every assistant turn has weight 0: there is nothing to learn")
    return ChatExample(line=line, messages=parsed)


def _example(line: int, obj: dict[str, Any]) -> Example:
    if "messages" in obj:
        return _chat(line, obj["messages"])
    if "prompt" in obj or "completion" in obj:
        prompt, completion = obj.get("prompt"), obj.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ValueError("prompt and completion must both be strings")
        if not completion:
            raise ValueError("completion is empty: there is nothing to learn")
        return PromptCompletionExample(line=line, prompt=prompt, completion=completion)
    if "text" in obj:
        text = obj["text"]
        if not isinstance(text, str) or not text:
            raise ValueError("text must be a non-empty string")
        return TextExample(line=line, text=text)
    raise ValueError(
        'unknown format: a line needs "messages" (chat), "prompt" and "completion", or "text"'
    )


def parse_line(raw: bytes | str, line: int) -> Example | None:
    """The example on one line (numbered ``line``), None for a blank line; raises
    :class:`TrainingDataError` naming the line and what is wrong with it."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise TrainingDataError(line, "not UTF-8 text") from None
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrainingDataError(line, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError):  # numbers beyond Python's digit limit, deep nesting
        raise TrainingDataError(
            line, "malformed JSON (too deeply nested or a number too long)"
        ) from None
    if not isinstance(obj, dict):
        raise TrainingDataError(line, "not a JSON object")
    try:
        return _example(line, obj)
    except ValueError as exc:
        raise TrainingDataError(line, str(exc)) from None


def _mixed(example: Example, first: Example) -> TrainingDataError:
    return TrainingDataError(
        example.line,
        f"a {FORMAT_NAMES[example.format]} example in a file of "
        f"{FORMAT_NAMES[first.format]} examples (line {first.line}); use one format per file",
    )


def _scan(lines: Iterable[bytes | str]) -> Iterator[Example | TrainingDataError]:
    """Every example of the file, or the error in its place; mixed formats are errors."""
    first: Example | None = None
    for number, raw in enumerate(lines, start=1):
        try:
            example = parse_line(raw, number)
        except TrainingDataError as exc:
            yield exc
            continue
        if example is None:
            continue
        if first is None:
            first = example
        if example.format != first.format:
            yield _mixed(example, first)
        else:
            yield example


def _empty(min_examples: int, found: int) -> TrainingDataError:
    if found == 0:
        return TrainingDataError(None, "the file holds no training examples")
    return TrainingDataError(
        None, f"the file holds {found} training examples; at least {min_examples} are needed"
    )


def validate_file(
    lines: Iterable[bytes | str], *, min_examples: int = 1, max_errors: int = MAX_REPORTED
) -> DataReport:
    """Check a whole training file without a model; the report counts the examples and keeps
    the first ``max_errors`` errors (reading stops there)."""
    report = DataReport()
    for item in _scan(_counted(lines, report)):
        if isinstance(item, TrainingDataError):
            report.errors.append(item)
            if len(report.errors) >= max_errors:
                return report
            continue
        report.examples += 1
        report.format = report.format or item.format
    if not report.errors and report.examples < min_examples:
        report.errors.append(_empty(min_examples, report.examples))
    return report


def _counted(lines: Iterable[bytes | str], report: DataReport) -> Iterator[bytes | str]:
    for raw in lines:
        report.lines += 1
        yield raw


def read_examples(lines: Iterable[bytes | str], *, min_examples: int = 1) -> list[Example]:
    """Every example of a training file; raises the first :class:`TrainingDataError`."""
    examples: list[Example] = []
    for item in _scan(lines):
        if isinstance(item, TrainingDataError):
            raise item
        examples.append(item)
    if len(examples) < min_examples:
        raise _empty(min_examples, len(examples))
    return examples
