"""What a file of the Files API must hold for its purpose, checked line by line as it arrives.

``batch``, ``fine-tune`` and ``evals`` files are JSONL: one JSON object per line (blank lines
are skipped, but still counted in line numbers). ``user_data`` files may hold any bytes. A
:class:`JsonlChecker` is fed the bytes in chunks of any size and keeps only the line being
read (at most ``max_line_bytes``) and, for a batch file, the ``custom_id`` of each line; its
:meth:`~JsonlChecker.finish` raises one ``InvalidRequestError`` naming the first bad lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final, Literal

from lmaas.errors import InvalidRequestError

Purpose = Literal["batch", "fine-tune", "evals", "user_data"]
PURPOSES: Final[tuple[Purpose, ...]] = ("batch", "fine-tune", "evals", "user_data")
JSONL_PURPOSES: Final = frozenset({"batch", "fine-tune", "evals"})
BATCH_URLS: Final = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/classify",
    "/v1/score",
)
CHAT_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_REPORTED: Final = 5
MAX_CUSTOM_ID: Final = 512


def validate_purpose(purpose: str) -> Purpose:
    """``purpose`` if files may be uploaded for it, else a 400 naming ``purpose``."""
    if purpose not in PURPOSES:
        raise InvalidRequestError(
            f"purpose must be one of {', '.join(PURPOSES)}; got {purpose[:64]!r}",
            param="purpose",
            code="invalid_purpose",
        )
    return purpose


def _batch_problem(line: dict[str, Any], seen: dict[str, int], number: int) -> str | None:
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
        return f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters"
    if line.get("method") != "POST":
        return 'method must be "POST"'
    url = line.get("url")
    if url not in BATCH_URLS:
        return f"url must be one of {', '.join(BATCH_URLS)}"
    if not isinstance(line.get("body"), dict):
        return "body must be a JSON object (the request to send to url)"
    first = seen.setdefault(custom_id, number)
    if first != number:
        return f"custom_id {custom_id[:64]!r} repeats line {first}"
    return None


def _chat_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be a JSON object"
        if message.get("role") not in CHAT_ROLES:
            return f"messages[{i}].role must be one of {', '.join(sorted(CHAT_ROLES))}"
        content = message.get("content")
        if not (content is None or isinstance(content, str | list)):
            return f"messages[{i}].content must be a string or a list of parts"
    if not any(m["role"] == "assistant" for m in messages):
        return "messages must hold an assistant message (what the model should learn to say)"
    return None


def _fine_tune_problem(line: dict[str, Any], _seen: dict[str, int], _number: int) -> str | None:
    if "messages" in line:
        return _chat_problem(line["messages"])
    if "prompt" in line or "completion" in line:
        if not isinstance(line.get("prompt"), str) or not isinstance(line.get("completion"), str):
            return "prompt and completion must both be strings"
        return None
    if "text" in line:
        return None if isinstance(line["text"], str) else "text must be a string"
    return "a fine-tune line needs messages (chat), prompt and completion, or text"


def _evals_problem(line: dict[str, Any], _seen: dict[str, int], _number: int) -> str | None:
    for field in ("item", "sample"):
        if field in line and not isinstance(line[field], dict):
            return f"{field} must be a JSON object"
    return None


LineCheck = Callable[[dict[str, Any], dict[str, int], int], str | None]
_CHECKS: Final[dict[str, LineCheck]] = {
    "batch": _batch_problem,
    "fine-tune": _fine_tune_problem,
    "evals": _evals_problem,
}


class JsonlChecker:
    """Checks the lines of one file of ``purpose`` (one of :data:`JSONL_PURPOSES`)."""

    def __init__(self, purpose: str, *, max_line_bytes: int) -> None:
        self.purpose = purpose
        self._check = _CHECKS[purpose]
        self._max_line_bytes = max_line_bytes
        self._partial = bytearray()
        self._skipping = False  # inside a line already reported as too long
        self._seen: dict[str, int] = {}
        self.line_number = 0  # lines started so far, blank ones included
        self.lines = 0  # lines holding an object
        self.problems: list[tuple[int, str]] = []

    @property
    def stopped(self) -> bool:
        """Enough bad lines were found to report: nothing further needs reading."""
        return len(self.problems) >= MAX_REPORTED

    def feed(self, chunk: bytes) -> None:
        start = 0
        while not self.stopped:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._extend(chunk[start:])
                return
            self._extend(chunk[start:end])
            self._end_line()
            start = end + 1

    def finish(self) -> int:
        """The number of lines holding an object; raises ``InvalidRequestError`` (400, param
        ``file``) naming the first bad lines, or when there is no line at all."""
        if not self.stopped and (self._partial or self._skipping):
            self._end_line()
        if self.problems:
            shown = "; ".join(f"line {n}: {why}" for n, why in self.problems)
            more = f" (the first {MAX_REPORTED} bad lines)" if self.stopped else ""
            raise InvalidRequestError(
                f"the file is not valid JSONL for purpose {self.purpose!r}{more}: {shown}",
                param="file",
                code="invalid_file",
            )
        if self.lines == 0:
            raise InvalidRequestError(
                f"the file holds no JSONL lines; purpose {self.purpose!r} needs one JSON "
                "object per line",
                param="file",
                code="invalid_file",
            )
        return self.lines

    def _extend(self, data: bytes) -> None:
        if self._skipping or not data:
            return
        if len(self._partial) + len(data) > self._max_line_bytes:
            self._partial.clear()
            self._skipping = True
            return
        self._partial += data

    def _end_line(self) -> None:
        self.line_number += 1
        if self._skipping:
            self._skipping = False
            self._problem(f"longer than {self._max_line_bytes} bytes (files.max_line_bytes)")
            return
        raw = bytes(self._partial)
        self._partial.clear()
        if not raw.strip():
            return
        problem = self._line_problem(raw)
        if problem is not None:
            self._problem(problem)

    def _line_problem(self, raw: bytes) -> str | None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "not UTF-8 text"
        try:
            line = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"not valid JSON ({exc.msg} at column {exc.colno})"
        except (ValueError, RecursionError):  # integers beyond Python's digit limit, nesting
            return "not valid JSON (too deeply nested, or a number too long)"
        if not isinstance(line, dict):
            return "not a JSON object"
        self.lines += 1
        return self._check(line, self._seen, self.line_number)

    def _problem(self, why: str) -> None:
        self.problems.append((self.line_number, why))
