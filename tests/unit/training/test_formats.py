"""Training files read line by line: the three formats, and errors that name the line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lmaas.training.formats import (
    ChatExample,
    PromptCompletionExample,
    TextExample,
    TrainingDataError,
    read_examples,
    validate_file,
)
from tests.unit.training.conftest import jsonl

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def test_each_format_is_read() -> None:
    [chat] = read_examples(jsonl([CHAT]))
    [pc] = read_examples(jsonl([{"prompt": "2+2=", "completion": "4"}]))
    [text] = read_examples(jsonl([{"text": "once upon a time"}]))
    assert isinstance(chat, ChatExample)
    assert [(m.role, m.content, m.learn) for m in chat.messages] == [
        ("user", "hi", False),
        ("assistant", "yo", True),
    ]
    assert isinstance(pc, PromptCompletionExample) and (pc.prompt, pc.completion) == ("2+2=", "4")
    assert isinstance(text, TextExample) and text.text == "once upon a time"


def test_text_parts_are_joined_and_weight_zero_turns_are_context() -> None:
    row = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": "first", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "second"},
        ]
    }
    [example] = read_examples(jsonl([row]))
    assert isinstance(example, ChatExample)
    assert example.messages[0].content == "ab"
    assert [m.learn for m in example.messages] == [False, False, False, True]


def test_blank_lines_are_skipped_but_counted_in_line_numbers() -> None:
    lines = [b"\n", *jsonl([CHAT]), b"   \n", b"{not json\n"]
    with pytest.raises(TrainingDataError) as caught:
        read_examples(lines)
    assert caught.value.line == 4
    assert "malformed JSON" in caught.value.message
    assert str(caught.value).startswith("line 4: ")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"input": "x"}, "unknown format"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role must be one of"),
        ({"messages": [{"role": "assistant", "content": "x", "weight": 0}]}, "weight 0"),
        ({"messages": [{"role": "user", "content": "x", "weight": 1}]}, "assistant messages only"),
        ({"messages": [{"role": "assistant", "content": [{"type": "image_url"}]}]}, "text part"),
        ({"prompt": "x"}, "must both be strings"),
        ({"prompt": "x", "completion": ""}, "completion is empty"),
        ({"text": 3}, "non-empty string"),
    ],
)
def test_a_bad_line_is_named_with_its_reason(row: dict[str, object], reason: str) -> None:
    lines = [*jsonl([CHAT, CHAT]), *jsonl([row])]
    with pytest.raises(TrainingDataError) as caught:
        read_examples(lines)
    assert caught.value.line == 3
    assert reason in caught.value.message


def test_not_an_object_and_not_utf8() -> None:
    report = validate_file([b"[1, 2]\n", b"\xff\xfe\n"])
    assert [(e.line, e.message) for e in report.errors] == [
        (1, "not a JSON object"),
        (2, "not UTF-8 text"),
    ]


def test_mixed_formats_name_the_line_and_the_first_format() -> None:
    lines = jsonl([CHAT, CHAT, {"prompt": "a", "completion": "b"}])
    with pytest.raises(TrainingDataError) as caught:
        read_examples(lines)
    assert caught.value.line == 3
    assert "prompt/completion example in a file of chat (messages) examples (line 1)" in str(
        caught.value
    )


def test_an_empty_file_is_an_error_of_the_whole_file() -> None:
    for lines in ([], [b"\n", b"  \n"]):
        report = validate_file(lines)
        assert not report.ok
        assert report.errors[0].line is None
        assert "no training examples" in report.summary()
    with pytest.raises(TrainingDataError, match="no training examples"):
        read_examples([])


def test_validate_counts_and_keeps_the_first_errors() -> None:
    good = jsonl([{"text": "a"}] * 3)
    bad = [b"{\n"] * 10
    report = validate_file([*good, *bad], max_errors=3)
    assert report.format == "text"
    assert report.examples == 3
    assert [e.line for e in report.errors] == [4, 5, 6]
    assert report.lines == 6  # reading stopped at the third error
    assert "line 4: malformed JSON" in report.summary()


def test_validate_a_good_file_and_a_minimum() -> None:
    report = validate_file(jsonl([CHAT] * 4))
    assert report.ok and report.examples == 4 and report.lines == 4 and report.format == "chat"
    short = validate_file(jsonl([CHAT] * 4), min_examples=10)
    assert "holds 4 training examples; at least 10" in short.summary()


def test_formats_imports_no_torch() -> None:
    """Job creation checks a file with this module alone: it must stay cheap to import."""
    source = Path(__file__).parents[3] / "src" / "lmaas" / "training" / "formats.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "json", "collections", "dataclasses", "typing"}
