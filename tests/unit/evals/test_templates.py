"""Eval templates: rendering, references and their checks, and the chat messages of items."""

from __future__ import annotations

import pytest

from lmaas.jobs.eval_items import ItemError, chat_body, item_status, messages_for, split_entry
from lmaas.jobs.eval_templates import TemplateError, check_template, render, resolve_reference

SCOPE = {"item": {"q": "2+2?", "meta": {"lang": "en"}, "tags": ["a", "b"], "n": 4}, "sample": None}


def test_render_puts_values_in_place() -> None:
    assert render("Q: {{item.q}} ({{ item.meta.lang }})", SCOPE) == "Q: 2+2? (en)"
    assert render("{{item.tags.1}} {{item.n}} {{item.meta}}", SCOPE) == 'b 4 {"lang":"en"}'


def test_a_missing_value_names_the_reference() -> None:
    with pytest.raises(TemplateError) as caught:
        render("{{item.nope}}", SCOPE)
    assert caught.value.reference == "item.nope"


@pytest.mark.parametrize(
    ("template", "fields", "sample", "problem"),
    [
        ("{{item.q}}", frozenset({"q"}), False, None),
        ("{{item.x}}", frozenset({"q"}), False, "no property 'x'"),
        ("{{sample.output_text}}", None, False, "no sample"),
        ("{{sample.nope}}", None, True, "a sample has"),
        ("{{ctx.q}}", None, False, "refers to 'ctx'"),
        ("{{item.q + 1}}", None, False, "is not a reference"),
        ("{{item}}", None, False, "name a field"),
    ],
)
def test_check_template(
    template: str, fields: frozenset[str] | None, sample: bool, problem: str | None
) -> None:
    problems = check_template(template, item_fields=fields, sample=sample)
    if problem is None:
        assert problems == []
    else:
        assert problems and problem in problems[0]


def test_item_reference_resolves_to_the_value() -> None:
    assert resolve_reference("item.tags", SCOPE) == ["a", "b"]
    assert resolve_reference("{{item.meta}}", SCOPE) == {"lang": "en"}


def test_messages_from_a_template_and_from_an_item_reference() -> None:
    template = {
        "type": "template",
        "template": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": {"type": "input_text", "text": "{{item.q}}"}},
        ],
    }
    assert messages_for(template, SCOPE) == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "2+2?"},
    ]
    scope = {"item": {"messages": [{"role": "user", "content": "{{not rendered}}"}]}}
    reference = {"type": "item_reference", "item_reference": "item.messages"}
    assert messages_for(reference, scope) == [{"role": "user", "content": "{{not rendered}}"}]
    with pytest.raises(ItemError):
        messages_for({"type": "template", "template": [{"role": "robot", "content": "x"}]}, SCOPE)


def test_chat_body_maps_sampling_params() -> None:
    body = chat_body("m", [], {"max_completion_tokens": 5, "temperature": 0, "seed": 1})
    assert body == {
        "model": "m",
        "messages": [],
        "priority": "batch",
        "max_tokens": 5,
        "temperature": 0,
        "seed": 1,
    }


def test_split_entry_and_status() -> None:
    assert split_entry({"item": {"a": 1}}) == ({"a": 1}, None)
    with pytest.raises(ItemError):
        split_entry({"a": 1})
    assert item_status([{"passed": True}, {"passed": True}], None) == "pass"
    assert item_status([{"passed": True}, {"passed": False}], None) == "fail"
    assert item_status([{"passed": False, "error": {}}], None) == "error"
    assert item_status([], {"error": {"code": "x"}}) == "error"
