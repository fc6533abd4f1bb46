"""The graders of an eval: checking their specs, grading one item, and the figures of a run.

OpenAI's ``string_check`` (eq, ne, like = contains, ilike = contains ignoring case) and
``text_similarity`` (``bleu`` and ``gleu`` per sentence, ``rouge_1`` ... ``rouge_5`` and
``rouge_l`` F-measure, ``fuzzy_match`` as a normalised edit-distance ratio, ``cosine`` of two
embeddings; a score in [0, 1] passes at ``pass_threshold``), and lmaas's ``perplexity`` and
``label``. Scores come from well-kept libraries: sacrebleu (BLEU), nltk (GLEU), rouge-score,
rapidfuzz, scikit-learn (macro-F1).

Grading an item renders the grader's templates over ``{"item": ..., "sample": ...}`` and, for
the graders that need a model (cosine, perplexity, label), asks a :class:`GraderModels` (the
job runner's client of the gateway; a fake in unit tests). A result is a dict in OpenAI's
output-item shape (``name``, ``type``, ``passed``, ``score``) with what the run's figures need
(the texts for corpus BLEU, log-likelihoods for perplexity, labels for F1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from pydantic import TypeAdapter, ValidationError

from lmaas.errors import InvalidRequestError
from lmaas.jobs.eval_templates import TemplateError, check_template, render
from lmaas.protocol.evals import (
    GRADER_TYPES,
    SIMILARITY_METRICS,
    GraderSpec,
    LabelGrader,
    PerplexityGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)

_SPEC: Final = TypeAdapter(GraderSpec)
_OPENAI_ONLY: Final = ("label_model", "score_model", "python", "multi")
DEFAULT_EMBEDDING_MODEL: Final = "all-minilm-l6-v2"


class GraderModels(Protocol):
    """What graders ask of models (through the gateway's own endpoints)."""

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]: ...

    async def score(self, model: str, text: str, prompt: str | None) -> tuple[float, int]:
        """(sum of the log-probabilities of ``text``'s tokens, their number)."""
        ...

    async def classify(self, model: str, text: str, labels: list[str] | None) -> str: ...


class GradingError(Exception):
    """An item could not be graded (a missing field, a model that failed)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- specs ----------------------------------------------------------------------------------------


def parse_criteria(raw: Sequence[Mapping[str, Any]]) -> list[GraderSpec]:
    """The graders of ``testing_criteria``; 400 naming the field of the first bad one."""
    specs: list[GraderSpec] = []
    names: set[str] = set()
    for index, entry in enumerate(raw):
        where = f"testing_criteria[{index}]"
        kind = entry.get("type") if isinstance(entry, Mapping) else None
        if kind in _OPENAI_ONLY:
            raise InvalidRequestError(
                f"{where}: grader type {kind!r} needs a hosted model grader that lmaas does not "
                f"run; supported types: {', '.join(GRADER_TYPES)}",
                param=f"{where}.type",
                code="unsupported_grader",
            )
        if kind not in GRADER_TYPES:
            raise InvalidRequestError(
                f"{where}: unknown grader type {kind!r}; supported: {', '.join(GRADER_TYPES)}",
                param=f"{where}.type",
                code="unsupported_grader",
            )
        if kind == "text_similarity" and entry.get("evaluation_metric") not in SIMILARITY_METRICS:
            raise InvalidRequestError(
                f"{where}: unknown evaluation_metric {entry.get('evaluation_metric')!r}; "
                f"supported: {', '.join(SIMILARITY_METRICS)}",
                param=f"{where}.evaluation_metric",
                code="unsupported_metric",
            )
        try:
            spec = _SPEC.validate_python(entry)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"][1:])
            raise InvalidRequestError(
                f"{where}.{field}: {error['msg']}", param=f"{where}.{field}"
            ) from None
        if spec.name in names:
            raise InvalidRequestError(
                f"{where}: two graders are named {spec.name!r}", param=f"{where}.name"
            )
        names.add(spec.name)
        specs.append(spec)
    return specs


def templates_of(spec: GraderSpec) -> dict[str, str]:
    fields = {"input": spec.input}
    if isinstance(spec, StringCheckGrader | TextSimilarityGrader | LabelGrader):
        fields["reference"] = spec.reference
    if isinstance(spec, PerplexityGrader) and spec.prompt is not None:
        fields["prompt"] = spec.prompt
    return fields


def check_criteria(
    specs: Sequence[GraderSpec], *, item_fields: frozenset[str] | None, sample: bool
) -> None:
    """400 for a template that refers to what the items or samples will not have."""
    for index, spec in enumerate(specs):
        for field, template in templates_of(spec).items():
            problems = check_template(template, item_fields=item_fields, sample=sample)
            if problems:
                raise InvalidRequestError(
                    f"testing_criteria[{index}].{field}: {problems[0]}",
                    param=f"testing_criteria[{index}].{field}",
                    code="invalid_template",
                )


def models_of(spec: GraderSpec, default: str | None) -> str | None:
    """The model ``spec`` asks (None: it needs none)."""
    if isinstance(spec, TextSimilarityGrader):
        if spec.evaluation_metric != "cosine":
            return None
        return spec.embedding_model or DEFAULT_EMBEDDING_MODEL
    if isinstance(spec, PerplexityGrader | LabelGrader):
        return spec.model or default
    return None


# -- one item -------------------------------------------------------------------------------------


async def grade(
    spec: GraderSpec, scope: Mapping[str, Any], models: GraderModels, default_model: str | None
) -> dict[str, Any]:
    """``spec``'s result for one item (raises :class:`GradingError`)."""
    try:
        texts = {field: render(t, scope) for field, t in templates_of(spec).items()}
    except TemplateError as exc:
        raise GradingError("missing_field", exc.message) from None
    base: dict[str, Any] = {"name": spec.name, "type": spec.type, "sample": None}
    if isinstance(spec, StringCheckGrader):
        passed = string_check(spec.operation, texts["input"], texts["reference"])
        return base | {"passed": passed, "score": float(passed)}
    if isinstance(spec, TextSimilarityGrader):
        score = await _similarity(spec, texts["input"], texts["reference"], models)
        return base | {
            "passed": score >= spec.pass_threshold,
            "score": score,
            "input": texts["input"],
            "reference": texts["reference"],
        }
    model = models_of(spec, default_model)
    if model is None:
        raise GradingError("no_model", f"grader {spec.name!r} names no model and the run has none")
    if isinstance(spec, PerplexityGrader):
        logprob, tokens = await models.score(model, texts["input"], texts.get("prompt"))
        perplexity = math.exp(-logprob / tokens) if tokens else None
        passed = perplexity is not None and (
            spec.pass_threshold is None or perplexity <= spec.pass_threshold
        )
        return base | {
            "passed": passed,
            "score": perplexity,
            "logprob": logprob,
            "tokens": tokens,
        }
    predicted = await models.classify(model, texts["input"], spec.candidate_labels)
    reference = texts["reference"]
    passed = predicted == reference
    return base | {
        "passed": passed,
        "score": float(passed),
        "label": predicted,
        "reference": reference,
    }


def string_check(operation: str, value: str, reference: str) -> bool:
    if operation == "eq":
        return value == reference
    if operation == "ne":
        return value != reference
    if operation == "like":
        return reference in value
    return reference.casefold() in value.casefold()  # ilike


async def _similarity(
    spec: TextSimilarityGrader, text: str, reference: str, models: GraderModels
) -> float:
    metric = spec.evaluation_metric
    if metric == "cosine":
        model = spec.embedding_model or DEFAULT_EMBEDDING_MODEL
        first, second = await models.embed(model, [text, reference])
        return cosine(first, second)
    return similarity(metric, text, reference)


def similarity(metric: str, text: str, reference: str) -> float:
    """A text-only similarity in [0, 1] (every metric but ``cosine``)."""
    if metric == "bleu":
        import sacrebleu

        return float(sacrebleu.sentence_bleu(text, [reference]).score) / 100.0
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu([reference.split()], text.split()))
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return float(fuzz.ratio(text, reference)) / 100.0
    if metric.startswith("rouge_"):
        kind = "rouge" + metric.removeprefix("rouge_").upper()
        return float(_rouge(kind).score(reference, text)[kind].fmeasure)
    raise ValueError(f"unknown metric {metric!r}")


def _rouge(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind])


def cosine(first: Sequence[float], second: Sequence[float]) -> float:
    dot = sum(a * b for a, b in zip(first, second, strict=True))
    norms = math.sqrt(sum(a * a for a in first)) * math.sqrt(sum(b * b for b in second))
    return dot / norms if norms else 0.0


# -- a run ----------------------------------------------------------------------------------------


def criterion_metrics(spec: GraderSpec, results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The figures of one grader over a run's graded items (errored ones left out)."""
    graded = [r for r in results if "error" not in r]
    figures: dict[str, Any] = {"graded": len(graded)}
    if not graded:
        return figures
    passed = sum(1 for r in graded if r.get("passed"))
    figures["pass_rate"] = passed / len(graded)
    scores = [float(r["score"]) for r in graded if r.get("score") is not None]
    if scores:
        figures["mean_score"] = sum(scores) / len(scores)
    if isinstance(spec, TextSimilarityGrader) and spec.evaluation_metric in ("bleu", "gleu"):
        figures[f"corpus_{spec.evaluation_metric}"] = _corpus(
            spec.evaluation_metric, [r["input"] for r in graded], [r["reference"] for r in graded]
        )
    if isinstance(spec, PerplexityGrader):
        tokens = sum(int(r["tokens"]) for r in graded)
        logprob = sum(float(r["logprob"]) for r in graded)
        figures["perplexity"] = math.exp(-logprob / tokens) if tokens else None
        figures["tokens"] = tokens
    if isinstance(spec, LabelGrader):
        figures.update(
            label_metrics([r["reference"] for r in graded], [r["label"] for r in graded])
        )
    return figures


def _corpus(metric: str, texts: list[str], references: list[str]) -> float:
    if metric == "bleu":
        import sacrebleu

        return float(sacrebleu.corpus_bleu(texts, [references]).score) / 100.0
    from nltk.translate.gleu_score import corpus_gleu

    return float(corpus_gleu([[r.split()] for r in references], [t.split() for t in texts]))


def label_metrics(references: list[str], predicted: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(references, predicted)),
        "macro_f1": float(f1_score(references, predicted, average="macro", zero_division=0)),
    }
