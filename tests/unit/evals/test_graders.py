"""Graders against values computed by hand (BLEU, ROUGE, GLEU, fuzzy match, cosine, F1,
perplexity), and the checks of grader specs."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from lmaas.errors import InvalidRequestError
from lmaas.jobs.graders import (
    check_criteria,
    criterion_metrics,
    grade,
    label_metrics,
    parse_criteria,
    similarity,
    string_check,
)

HYP = "the cat sat on the mat"
REF = "the cat is on the mat"


def test_sentence_bleu_matches_the_hand_computed_value() -> None:
    # 1-4 gram precisions 5/6, 3/5, 1/4 and 0/3; sacrebleu's default exp smoothing turns the
    # first zero count into 1/(2*3); equal lengths, so no brevity penalty.
    expected = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert similarity("bleu", HYP, REF) == pytest.approx(expected, rel=1e-6)
    assert similarity("bleu", REF, REF) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("rouge_1", 5 / 6),  # unigram overlap: the x2, cat, on, mat
        ("rouge_2", 3 / 5),  # bigram overlap: the cat, on the, the mat
        ("rouge_l", 5 / 6),  # longest common subsequence: the cat on the mat
        ("gleu", 9 / 18),  # 9 of 18 n-grams (1-4) match, on both sides
    ],
)
def test_overlap_metrics_match_hand_computed_values(metric: str, expected: float) -> None:
    assert similarity(metric, HYP, REF) == pytest.approx(expected, rel=1e-6)


def test_fuzzy_match_is_the_normalised_indel_ratio() -> None:
    # abcd vs abce: 3 common characters of 8 in all -> 2*3/8
    assert similarity("fuzzy_match", "abcd", "abce") == pytest.approx(0.75)


def test_string_check_operations() -> None:
    assert string_check("eq", "Paris", "Paris")
    assert not string_check("eq", "paris", "Paris")
    assert string_check("ne", "Lyon", "Paris")
    assert string_check("like", "It is Paris.", "Paris")
    assert not string_check("like", "It is paris.", "Paris")
    assert string_check("ilike", "It is PARIS.", "paris")


def test_macro_f1_and_accuracy_match_hand_computed_values() -> None:
    # class a: P 1/1, R 1/2 -> F 2/3; class b: P 2/3, R 1 -> F 4/5
    figures = label_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert figures["accuracy"] == pytest.approx(0.75)
    assert figures["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)


class FakeModels:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        self.asked.append(("embed", model))
        return [[1.0, 0.0], [1.0, 1.0]]

    async def score(self, model: str, text: str, prompt: str | None) -> tuple[float, int]:
        self.asked.append(("score", model))
        return (-6.0, 3) if text == "long" else (-2.0, 1)

    async def classify(self, model: str, text: str, labels: list[str] | None) -> str:
        self.asked.append(("classify", model))
        return "b"


def _grade(spec: dict[str, Any], scope: dict[str, Any], model: str | None = "m") -> dict[str, Any]:
    (parsed,) = parse_criteria([spec])
    return asyncio.run(grade(parsed, scope, FakeModels(), model))


def test_cosine_uses_the_embedding_model_and_passes_at_the_threshold() -> None:
    spec = {
        "type": "text_similarity",
        "name": "cos",
        "input": "{{sample.output_text}}",
        "reference": "{{item.ref}}",
        "evaluation_metric": "cosine",
        "pass_threshold": 0.7,
    }
    result = _grade(spec, {"item": {"ref": "x"}, "sample": {"output_text": "y"}})
    assert result["score"] == pytest.approx(1 / math.sqrt(2))
    assert result["passed"] is True


def test_perplexity_per_item_and_over_the_run() -> None:
    spec = {"type": "perplexity", "name": "ppl", "input": "{{item.text}}", "pass_threshold": 5}
    first = _grade(spec, {"item": {"text": "long"}})
    second = _grade(spec, {"item": {"text": "short"}})
    assert first["score"] == pytest.approx(math.exp(2))  # -(-6)/3
    assert first["passed"] is False  # e^2 > 5
    assert second["score"] == pytest.approx(math.exp(2))
    (parsed,) = parse_criteria([spec])
    figures = criterion_metrics(parsed, [first, second])
    assert figures["perplexity"] == pytest.approx(math.exp(8 / 4))
    assert figures["tokens"] == 4


def test_label_grader_compares_with_the_reference() -> None:
    spec = {"type": "label", "name": "lab", "input": "{{item.text}}", "reference": "{{item.y}}"}
    assert _grade(spec, {"item": {"text": "t", "y": "b"}})["passed"] is True
    assert _grade(spec, {"item": {"text": "t", "y": "a"}})["passed"] is False


def test_corpus_bleu_is_reported_over_the_run() -> None:
    spec = {
        "type": "text_similarity",
        "name": "b",
        "input": "{{sample.output_text}}",
        "reference": "{{item.ref}}",
        "evaluation_metric": "bleu",
        "pass_threshold": 0.5,
    }
    results = [
        _grade(spec, {"item": {"ref": REF}, "sample": {"output_text": REF}}),
        _grade(spec, {"item": {"ref": REF}, "sample": {"output_text": HYP}}),
    ]
    (parsed,) = parse_criteria([spec])
    figures = criterion_metrics(parsed, results)
    assert [r["passed"] for r in results] == [True, False]
    assert figures["pass_rate"] == 0.5
    # corpus BLEU pools n-gram counts: (11/12 * 8/10 * 5/8 * 3/6) ** (1/4)
    assert figures["corpus_bleu"] == pytest.approx((11 / 12 * 8 / 10 * 5 / 8 * 3 / 6) ** 0.25)


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"type": "python", "name": "p", "source": "x"}, "testing_criteria[0].type"),
        ({"type": "nope", "name": "p"}, "testing_criteria[0].type"),
        (
            {
                "type": "text_similarity",
                "name": "t",
                "input": "a",
                "reference": "b",
                "evaluation_metric": "meteor",
                "pass_threshold": 1,
            },
            "testing_criteria[0].evaluation_metric",
        ),
        (
            {
                "type": "string_check",
                "name": "s",
                "input": "a",
                "reference": "b",
                "operation": "gt",
            },
            "testing_criteria[0].operation",
        ),
        (
            {"type": "string_check", "name": "s", "input": "a", "operation": "eq"},
            "testing_criteria[0].reference",
        ),
    ],
)
def test_bad_grader_specs_name_the_field(spec: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_criteria([spec])
    assert caught.value.param == param


def test_templates_must_refer_to_declared_fields_and_an_existing_sample() -> None:
    specs = parse_criteria(
        [
            {
                "type": "string_check",
                "name": "s",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "operation": "eq",
            }
        ]
    )
    check_criteria(specs, item_fields=frozenset({"answer"}), sample=True)
    with pytest.raises(InvalidRequestError) as missing:
        check_criteria(specs, item_fields=frozenset({"question"}), sample=True)
    assert missing.value.param == "testing_criteria[0].reference"
    assert "answer" in missing.value.message
    with pytest.raises(InvalidRequestError) as no_sample:
        check_criteria(specs, item_fields=frozenset({"answer"}), sample=False)
    assert no_sample.value.param == "testing_criteria[0].input"
