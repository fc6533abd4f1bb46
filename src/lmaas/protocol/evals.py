"""The Evals API (``/v1/evals``) in OpenAI's shapes (the ``openai`` SDK's ``client.evals`` and
``client.evals.runs``): the requests, the eval, the run and its output items.

The parts of a request that have many variants (``data_source_config``, ``testing_criteria``,
a run's ``data_source``) arrive as JSON objects and are checked by the management layer
(``lmaas.jobs.graders`` and ``lmaas.gateway.management.evals``), so that an unknown grader or
data source is answered with a message listing what lmaas supports and ``param`` naming the
exact field. Grader specs are here because both the gateway (checks) and the job runner
(grading) read them.

lmaas extensions (documented in the README): the ``perplexity`` and ``label`` graders, an
``embedding_model`` for ``text_similarity`` with ``cosine``, per-criterion ``metrics`` (corpus
BLEU, mean ROUGE, perplexity, accuracy and macro-F1, ...) and ``progress`` on a run.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Name = Annotated[str, Field(min_length=1, max_length=256)]
Template = Annotated[str, Field(max_length=100_000)]
ModelName = Annotated[str, Field(min_length=1, max_length=256)]
SimilarityMetric = Literal[
    "fuzzy_match",
    "bleu",
    "gleu",
    "cosine",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
]
SIMILARITY_METRICS = get_args(SimilarityMetric)
RunStatus = Literal["queued", "in_progress", "completed", "canceled", "failed"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StringCheckGrader(_Spec):
    type: Literal["string_check"]
    name: Name
    input: Template
    reference: Template
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(_Spec):
    type: Literal["text_similarity"]
    name: Name
    input: Template
    reference: Template
    evaluation_metric: SimilarityMetric
    pass_threshold: float
    # lmaas: the served embeddings model behind `cosine` (default: the shipped one).
    embedding_model: ModelName | None = None


class PerplexityGrader(_Spec):
    """lmaas: the perplexity of ``input`` (read after ``prompt``, when given) under ``model``
    (default: the run's model); passes when at most ``pass_threshold`` (if set)."""

    type: Literal["perplexity"]
    name: Name
    input: Template
    prompt: Template | None = None
    model: ModelName | None = None
    pass_threshold: Annotated[float, Field(gt=0)] | None = None


class LabelGrader(_Spec):
    """lmaas: classify ``input`` with ``model`` (a classifier, or a generation model with
    ``candidate_labels``) and compare the label with ``reference``; the run reports accuracy
    and macro-F1."""

    type: Literal["label"]
    name: Name
    input: Template
    reference: Template
    model: ModelName | None = None
    candidate_labels: (
        Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=64)] | None
    ) = None


GraderSpec = Annotated[
    StringCheckGrader | TextSimilarityGrader | PerplexityGrader | LabelGrader,
    Field(discriminator="type"),
]
GRADER_TYPES = ("string_check", "text_similarity", "perplexity", "label")


class EvalCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Name | None = None
    data_source_config: dict[str, Any]
    testing_criteria: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=32)]
    metadata: dict[str, Any] | None = None


class EvalUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Name | None = None
    metadata: dict[str, Any] | None = None


class Eval(BaseModel):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    data_source_config: dict[str, Any]  # {"type": "custom", "schema": {...}}
    testing_criteria: list[dict[str, Any]]
    created_at: int
    metadata: dict[str, str] | None = None


class EvalList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Eval]
    first_id: str | None
    last_id: str | None
    has_more: bool


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool = True
    eval_id: str


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Name | None = None
    data_source: dict[str, Any]
    metadata: dict[str, Any] | None = None


class ResultCounts(BaseModel):
    total: int = 0
    passed: int = 0
    failed: int = 0
    errored: int = 0


class CriterionResult(BaseModel):
    testing_criteria: str
    passed: int
    failed: int
    # lmaas: figures over the run (corpus BLEU, mean score, perplexity, accuracy, macro_f1, ...)
    metrics: dict[str, float | None] | None = None


class ModelUsage(BaseModel):
    model_name: str
    invocation_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0


class EvalError(BaseModel):
    code: str
    message: str


class RunProgress(BaseModel):
    """lmaas: how far a run is."""

    total: int
    done: int
    eta_at: int | None = None


class Run(BaseModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    name: str
    model: str | None
    status: RunStatus
    created_at: int
    data_source: dict[str, Any]
    error: EvalError | None = None
    result_counts: ResultCounts
    per_model_usage: list[ModelUsage]
    per_testing_criteria_results: list[CriterionResult]
    report_url: str
    metadata: dict[str, str] | None = None
    progress: RunProgress
    # lmaas: the store version the run evaluated (``name:number``), when it was one.
    model_version: str | None = None


class RunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Run]
    first_id: str | None
    last_id: str | None
    has_more: bool


class RunDeleted(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool = True
    run_id: str


class OutputItem(BaseModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    run_id: str
    eval_id: str
    created_at: int
    status: Literal["pass", "fail", "error"]
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[dict[str, Any]]
    sample: dict[str, Any] | None


class OutputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OutputItem]
    first_id: str | None
    last_id: str | None
    has_more: bool
