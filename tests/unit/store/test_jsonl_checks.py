"""The JSONL check of each file purpose, fed in chunks of any size."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lmaas.errors import InvalidRequestError
from lmaas.store.jsonl_checks import BATCH_URLS, MAX_REPORTED, JsonlChecker, validate_purpose


def check(purpose: str, data: bytes, *, chunk: int | None = None, max_line: int = 1024) -> int:
    checker = JsonlChecker(purpose, max_line_bytes=max_line)
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        checker.feed(data[i : i + step])
    return checker.finish()


def problems(purpose: str, data: bytes, **kwargs: Any) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        check(purpose, data, **kwargs)
    assert caught.value.param == "file" and caught.value.code == "invalid_file"
    return caught.value.message


def lines(*objects: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


def request(custom_id: str = "r1", **changes: Any) -> dict[str, Any]:
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    return {**line, **changes}


@pytest.mark.parametrize("purpose", ["batch", "fine-tune", "evals", "user_data"])
def test_the_four_purposes_are_accepted(purpose: str) -> None:
    assert validate_purpose(purpose) == purpose


@pytest.mark.parametrize("purpose", ["assistants", "vision", "Batch", "", "batch "])
def test_other_purposes_are_refused_naming_purpose(purpose: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_purpose(purpose)
    assert caught.value.param == "purpose" and caught.value.status_code == 400


@pytest.mark.parametrize("url", BATCH_URLS)
def test_a_batch_line_for_each_endpoint(url: str) -> None:
    assert check("batch", lines(request("a", url=url), request("b", url=url))) == 2


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (request(custom_id=""), "custom_id must be a string of 1 to 512 characters"),
        (request(custom_id=7), "custom_id must be a string"),
        (request(custom_id="x" * 513), "custom_id must be a string"),
        ({k: v for k, v in request().items() if k != "custom_id"}, "custom_id must be"),
        (request(method="GET"), 'method must be "POST"'),
        (request(url="/v1/images/generations"), "url must be one of /v1/chat/completions"),
        (request(url="http://evil/v1/chat/completions"), "url must be one of"),
        (request(body="hi"), "body must be a JSON object"),
        ({k: v for k, v in request().items() if k != "body"}, "body must be a JSON object"),
    ],
)
def test_bad_batch_lines(line: dict[str, Any], reason: str) -> None:
    message = problems("batch", lines(request("ok"), line))
    assert f"line 2: {reason}" in message and "line 1" not in message


def test_a_repeated_custom_id_names_its_first_line() -> None:
    data = lines(request("a"), request("b"), request("a"), request("b"))
    message = problems("batch", data)
    assert "line 3: custom_id 'a' repeats line 1" in message
    assert "line 4: custom_id 'b' repeats line 2" in message


@pytest.mark.parametrize(
    "line",
    [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": None, "tool_calls": []},
            ]
        },
        {"prompt": "2+2=", "completion": "4"},
        {"text": "Once upon a time"},
    ],
)
def test_fine_tune_lines(line: dict[str, Any]) -> None:
    assert check("fine-tune", lines(line)) == 1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": "hi"}, "messages must be a non-empty list"),
        ({"messages": ["hi"]}, "messages[0] must be a JSON object"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role must be one of"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content must be"),
        (
            {"messages": [{"role": "user", "content": "hi"}]},
            "messages must hold an assistant message",
        ),
        ({"prompt": "a"}, "prompt and completion must both be strings"),
        ({"completion": "a"}, "prompt and completion must both be strings"),
        ({"text": 5}, "text must be a string"),
        ({"input": "x"}, "a fine-tune line needs messages (chat), prompt and completion, or text"),
    ],
)
def test_bad_fine_tune_lines(line: dict[str, Any], reason: str) -> None:
    assert f"line 1: {reason}" in problems("fine-tune", lines(line))


def test_evals_lines_are_objects_whose_item_and_sample_are_objects() -> None:
    good = lines({"item": {"q": "2+2", "a": "4"}}, {"anything": 1}, {"item": {}, "sample": {}})
    assert check("evals", good) == 3
    assert "line 1: item must be a JSON object" in problems("evals", lines({"item": "q"}))
    assert "line 1: sample must be a JSON object" in problems("evals", lines({"sample": [1]}))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_chunk_boundaries_do_not_matter(chunk: int) -> None:
    data = lines(request("a"), request("b"), request("c")) + b"\r\n   \n{bad\n"
    whole = problems("batch", data)
    assert problems("batch", data, chunk=chunk) == whole
    assert "line 6: not valid JSON" in whole


def test_blank_lines_crlf_and_a_last_line_without_newline() -> None:
    first, last = (json.dumps(request(i)).encode() for i in "ab")
    data = b"\n" + first + b"\r\n\n  \t\n" + last
    assert check("batch", data, chunk=5) == 2
    assert "line 2: not valid JSON" in problems("evals", b'{"a": 1}\n{"b":')


@pytest.mark.parametrize("data", [b"", b"\n", b"\r\n \n\t\n"])
def test_a_file_without_lines_is_refused(data: bytes) -> None:
    assert "holds no JSONL lines" in problems("evals", data)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b'{"a": 1', "not valid JSON (Expecting ',' delimiter at column 8)"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'"just a string"', "not a JSON object"),
        (b"null", "not a JSON object"),
    ],
)
def test_lines_that_are_not_json_objects(raw: bytes, reason: str) -> None:
    assert f"line 1: {reason}" in problems("evals", raw + b"\n", max_line=1 << 20)


def test_an_overlong_line_is_a_bad_line_and_the_next_ones_are_still_read() -> None:
    long = json.dumps({"item": {"text": "x" * 2000}}).encode()
    data = long + b"\n" + lines({"item": {}}) + b"oops\n"
    message = problems("evals", data, chunk=100)
    assert "line 1: longer than 1024 bytes (files.max_line_bytes)" in message
    assert "line 2" not in message and "line 3: not valid JSON" in message
    assert "line 1: longer than" in problems("evals", long)  # the last line, no newline


def test_at_most_five_bad_lines_are_reported_and_reading_stops_there() -> None:
    checker = JsonlChecker("evals", max_line_bytes=1024)
    checker.feed(b"1\n" * (MAX_REPORTED + 3))
    assert checker.stopped and checker.line_number == MAX_REPORTED
    with pytest.raises(InvalidRequestError) as caught:
        checker.finish()
    message = caught.value.message
    assert message.count("not a JSON object") == MAX_REPORTED
    assert "the first 5 bad lines" in message and "line 6" not in message
    few = problems("evals", b"1\n2\n")
    assert "first 5" not in few and few.count("not a JSON object") == 2
