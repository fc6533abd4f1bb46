"""A batch's lines: what makes a line unusable, the request it becomes, the output line it
ends as (OpenAI's shape), and the check of an input file before a batch is accepted."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from lmaas.errors import InvalidRequestError
from lmaas.jobs.batch_lines import (
    BadLine,
    BatchLine,
    answered_item,
    bad_item,
    check_line,
    failed_item,
    parse_line,
    request_body,
    scan_input,
)

CHAT = "/v1/chat/completions"


def raw(custom_id: str = "a", url: str = CHAT, **body: Any) -> bytes:
    line = {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": "m", **body}}
    return json.dumps(line).encode()


@pytest.mark.parametrize(
    ("data", "custom_id", "why"),
    [
        (b"{not json", None, "not a JSON object"),
        (b"[1, 2]", None, "not a JSON object"),
        (b'{"method": "POST", "url": "/v1/completions", "body": {}}', None, "custom_id"),
        (b'{"custom_id": "x", "method": "GET", "url": "/v1/completions", "body": {}}', "x", "POST"),
        (b'{"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": 3}', "x", "body"),
    ],
)
def test_unusable_lines_are_bad_lines_keyed_by_what_they_have(
    data: bytes, custom_id: str | None, why: str
) -> None:
    line = parse_line(7, data)
    assert isinstance(line, BadLine) and line.code == "invalid_line" and why in line.message
    assert line.custom_id == custom_id
    assert line.key == (custom_id or "line 7")


def test_a_line_must_go_to_the_batch_endpoint_and_not_stream() -> None:
    line = parse_line(3, raw(url="/v1/embeddings"))
    assert isinstance(line, BatchLine)
    problem = check_line(line, CHAT)
    assert problem is not None and problem.code == "endpoint_mismatch" and problem.number == 3
    streaming = parse_line(4, raw(stream=True))
    assert isinstance(streaming, BatchLine)
    problem = check_line(streaming, CHAT)
    assert problem is not None and problem.code == "invalid_request"
    fine = parse_line(5, raw(stream=False))
    assert isinstance(fine, BatchLine) and check_line(fine, CHAT) is None


def test_generation_lines_run_at_batch_priority_and_no_higher() -> None:
    for asked, sent in ((None, "batch"), ("interactive", "batch"), ("background", "background")):
        extra = {} if asked is None else {"priority": asked}
        line = parse_line(1, raw(**extra))
        assert isinstance(line, BatchLine) and request_body(line)["priority"] == sent
        assert line.body.get("priority") == asked  # the line itself is left as it was
    embedding = parse_line(1, raw(url="/v1/embeddings", input="x"))
    assert isinstance(embedding, BatchLine) and "priority" not in request_body(embedding)


def test_an_answered_line_has_openais_output_shape() -> None:
    line = parse_line(2, raw("req-2"))
    assert isinstance(line, BatchLine)
    body = {"id": "chatcmpl-1", "usage": {"prompt_tokens": 9, "completion_tokens": 4}}
    item = answered_item(line, 200, "rid-1", body)
    assert (item.custom_id, item.line, item.ok) == ("req-2", 2, True)
    assert (item.prompt_tokens, item.completion_tokens) == (9, 4)
    output = json.loads(item.output)
    assert output["id"].startswith("batch_req_") and len(output["id"]) == 34
    assert output == {
        "id": output["id"],
        "custom_id": "req-2",
        "response": {"status_code": 200, "request_id": "rid-1", "body": body},
        "error": None,
    }


def test_a_refused_line_is_an_error_line_with_the_endpoints_answer() -> None:
    line = parse_line(1, raw())
    assert isinstance(line, BatchLine)
    envelope = {"error": {"message": "no model 'm'", "type": "x", "param": "model", "code": None}}
    item = answered_item(line, 404, "rid", envelope)
    output = json.loads(item.output)
    assert not item.ok and item.prompt_tokens == 0
    assert output["response"]["status_code"] == 404 and output["response"]["body"] == envelope
    assert output["error"] == {"code": "http_404", "message": "no model 'm'"}
    bare = json.loads(answered_item(line, 502, None, None).output)
    assert bare["error"] == {"code": "http_502", "message": "HTTP 502"}


def test_a_line_without_an_answer_has_no_response() -> None:
    line = parse_line(1, raw("z"))
    assert isinstance(line, BatchLine)
    output = json.loads(failed_item(line, "gateway_unreachable", "gone").output)
    assert output["response"] is None and output["custom_id"] == "z"
    assert output["error"] == {"code": "gateway_unreachable", "message": "gone"}
    bad = parse_line(9, b"[]")
    assert isinstance(bad, BadLine)
    item = bad_item(bad)
    assert item.custom_id == "line 9" and json.loads(item.output)["custom_id"] is None


def file_of(*lines: bytes) -> io.BytesIO:
    return io.BytesIO(b"\n".join(lines) + b"\n")


def test_an_input_file_is_counted_and_its_first_model_named() -> None:
    scan = scan_input(file_of(raw("a"), b"", raw("b"), b"  "), CHAT, max_lines=2)
    assert (scan.lines, scan.model) == (2, "m")


def test_an_input_file_with_a_line_for_another_endpoint_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        scan_input(file_of(raw("a"), b"", raw("b", "/v1/embeddings")), CHAT, max_lines=10)
    assert caught.value.param == "endpoint" and caught.value.code == "endpoint_mismatch"
    assert "line 3" in caught.value.message


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (file_of(raw("a"), raw("b"), raw("c")), "too_many_lines"),
        (io.BytesIO(b"\n\n"), "empty_file"),
    ],
)
def test_an_input_file_too_long_or_empty_is_refused(data: io.BytesIO, code: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        scan_input(data, CHAT, max_lines=2)
    assert caught.value.param == "input_file_id" and caught.value.code == code
