"""The lines of a batch: reading the input file, checking each line, the request it becomes,
and the output line it ends as (OpenAI's shape). Pure functions, no I/O beyond the file
handle they are given.

An input line is ``{"custom_id", "method": "POST", "url", "body"}``. Every line ends as one
output line ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}``: a 2xx answer goes to the batch's output file, anything else (a line that does
not fit the batch, a 4xx from the endpoint, a server error that outlasted its retries) to
its error file, with ``error`` set to ``{"code", "message"}``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from lmaas.errors import InvalidRequestError
from lmaas.jobs.leases import Item
from lmaas.store.jsonl_checks import BATCH_URLS

ENDPOINTS: Final = BATCH_URLS
# Generation endpoints take the lmaas `priority` field: a batch's lines ask for `batch`.
GENERATION: Final = frozenset({"/v1/chat/completions", "/v1/completions"})
BATCH_PRIORITIES: Final = frozenset({"batch", "background"})


@dataclass(frozen=True, slots=True)
class BatchLine:
    number: int  # in the input file, from 1 (blank lines counted)
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def key(self) -> str:
        return self.custom_id


@dataclass(frozen=True, slots=True)
class BadLine:
    number: int
    custom_id: str | None
    code: str
    message: str

    @property
    def key(self) -> str:
        """The line's key among the job's items: its custom_id, if it has a usable one."""
        return self.custom_id if self.custom_id is not None else f"line {self.number}"


def numbered_lines(handle: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of a file with their numbers (from 1, blank lines counted)."""
    for number, raw in enumerate(handle, start=1):
        if raw.strip():
            yield number, raw


def parse_line(number: int, raw: bytes) -> BatchLine | BadLine:
    try:
        line = json.loads(raw)
    except (ValueError, RecursionError):
        return BadLine(number, None, "invalid_line", "the line is not a JSON object")
    if not isinstance(line, dict):
        return BadLine(number, None, "invalid_line", "the line is not a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return BadLine(number, None, "invalid_line", "custom_id must be a non-empty string")
    url, body = line.get("url"), line.get("body")
    if line.get("method") != "POST" or not isinstance(url, str) or not isinstance(body, dict):
        message = 'a line needs "method": "POST", a url and a JSON object body'
        return BadLine(number, custom_id, "invalid_line", message)
    return BatchLine(number, custom_id, url, body)


def check_line(line: BatchLine, endpoint: str) -> BadLine | None:
    """Why ``line`` cannot run in a batch of ``endpoint``, or ``None``."""
    if line.url != endpoint:
        return BadLine(
            line.number,
            line.custom_id,
            "endpoint_mismatch",
            f"url {line.url[:64]!r} is not the batch's endpoint {endpoint!r}",
        )
    if line.body.get("stream") is True:
        return BadLine(
            line.number, line.custom_id, "invalid_request", "stream is not supported in a batch"
        )
    return None


def request_body(line: BatchLine) -> dict[str, Any]:
    """The body to send: a generation line runs at the ``batch`` priority (or the lower
    ``background`` it asked for), never before interactive requests."""
    body = dict(line.body)
    if line.url in GENERATION and body.get("priority") not in BATCH_PRIORITIES:
        body["priority"] = "batch"
    return body


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _request_line_id() -> str:
    return f"batch_req_{secrets.token_hex(12)}"


def answered_item(line: BatchLine, status: int, request_id: str | None, body: Any) -> Item:
    """The item of a line the endpoint answered: ok for a 2xx, an error line otherwise."""
    ok = 200 <= status < 300
    error = None if ok else _error_of(status, body)
    output = {
        "id": _request_line_id(),
        "custom_id": line.custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": error,
    }
    usage = body.get("usage") if ok and isinstance(body, dict) else None
    prompt = completion = 0
    if isinstance(usage, dict):
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
    return Item(line.custom_id, line.number, ok, _dumps(output), prompt, completion)


def failed_item(line: BatchLine | BadLine, code: str, message: str) -> Item:
    """The item of a line that got no answer from the endpoint."""
    output = {
        "id": _request_line_id(),
        "custom_id": line.custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
    return Item(line.key, line.number, False, _dumps(output))


def bad_item(bad: BadLine) -> Item:
    return failed_item(bad, bad.code, bad.message)


def _error_of(status: int, body: Any) -> dict[str, Any]:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return {
            "code": error.get("code") or f"http_{status}",
            "message": str(error.get("message") or f"HTTP {status}"),
        }
    return {"code": f"http_{status}", "message": f"HTTP {status}"}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass(frozen=True, slots=True)
class Scan:
    lines: int
    model: str | None  # the first line's model


def scan_input(handle: BinaryIO, endpoint: str, *, max_lines: int) -> Scan:
    """Check a batch's input file against its endpoint before the batch is accepted: 400
    (naming ``endpoint``) for a line whose url is another endpoint, 400 (naming
    ``input_file_id``) for more than ``max_lines`` lines."""
    count, model = 0, None
    for number, raw in numbered_lines(handle):
        count += 1
        if count > max_lines:
            raise InvalidRequestError(
                f"the input file has more than {max_lines} lines, the most one batch may "
                "hold (jobs.max_batch_lines); split it",
                param="input_file_id",
                code="too_many_lines",
            )
        line = parse_line(number, raw)
        if isinstance(line, BadLine):
            continue  # checked at upload; the runner reports it as an error line
        if line.url != endpoint:
            raise InvalidRequestError(
                f"line {number} of the input file asks for {line.url[:64]!r}, not the batch's "
                f"endpoint {endpoint!r}: every line of a batch goes to its endpoint",
                param="endpoint",
                code="endpoint_mismatch",
            )
        if model is None and isinstance(line.body.get("model"), str):
            model = line.body["model"][:200]
    if count == 0:
        raise InvalidRequestError(
            "the input file holds no request lines", param="input_file_id", code="empty_file"
        )
    return Scan(count, model)
