"""POST /v1/classify and POST /v1/nli: label probabilities for texts and text pairs.

Two ways to classify:

- A classifier model (a sequence-classification model, or a linear head trained on an
  embedding model) has fixed labels; the worker returns its softmax over them.
- Zero-shot, any model that can score text (a generation model): each candidate label is put
  into the hypothesis template, and the label's score is the log-likelihood the model gives
  the filled-in hypothesis when it follows the text::

      score(label) = log P(" " + template_after_slot(label) | text + "\\n" + template_before_slot)

  i.e. the sum of the logprobs of the hypothesis tokens from the label on (the part before the
  slot is the same for every label, so it is context, not scored). Probabilities are the
  softmax of the scores over the candidate labels, so they always sum to 1 and say which label
  the model finds likeliest relative to the others, not whether any label fits at all.

NLI works the same way: an NLI classifier's labels are mapped to entailment / neutral /
contradiction, or a generation model scores the answers " True" / " Neither" / " False" to
"<premise>\\nQuestion: <hypothesis> True, False, or Neither?\\nAnswer:".
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lmaas.engine.client import EngineClient
from lmaas.errors import InvalidRequestError
from lmaas.gateway.serving.common import engine_request_id
from lmaas.gateway.serving.tasks import ClientGone, TaskServing, softmax, split_template
from lmaas.keys import KeyInfo
from lmaas.protocol.engine import ModelInfo
from lmaas.protocol.tasks import CLASSIFY, SCORE, TaskRequest
from lmaas.protocol.understanding import ClassifyRequest, NLIRequest

NLI_LABELS = ("entailment", "neutral", "contradiction")
# How a generation model is asked: the answer word that stands for each relation.
NLI_ANSWERS = {"entailment": " True", "neutral": " Neither", "contradiction": " False"}
NLI_PROMPT = "{premise}\nQuestion: {hypothesis} True, False, or Neither?\nAnswer:"


def nli_label_order(labels: list[str]) -> list[int]:
    """For each NLI relation, the index of the classifier label that means it.

    Accepts the usual spellings (``ENTAILMENT``, ``entails``, ``contradiction``,
    ``not_entailment`` is refused: it is two-way); raises on anything else."""
    found: dict[str, int] = {}
    for i, label in enumerate(labels):
        low = label.lower()
        for relation, stem in (
            ("entailment", "entail"),
            ("neutral", "neutral"),
            ("contradiction", "contradict"),
        ):
            if low.startswith(stem):
                found.setdefault(relation, i)
    if sorted(found) != sorted(NLI_LABELS) or len(labels) != 3:
        raise InvalidRequestError(
            f"this classifier's labels {labels} are not the three NLI relations "
            f"({', '.join(NLI_LABELS)}); use an NLI model or a generation model",
            param="model",
            code="unsupported_labels",
        )
    return [found[r] for r in NLI_LABELS]


def _item(index: int, labels: list[str], probs: list[float]) -> dict[str, object]:
    ranked = sorted(zip(labels, probs, strict=True), key=lambda lp: -lp[1])
    return {
        "object": "classification",
        "index": index,
        "label": ranked[0][0],
        "score": ranked[0][1],
        "labels": [{"label": label, "score": p} for label, p in ranked],
    }


class ClassifyServing(TaskServing):
    async def classify(
        self, body: ClassifyRequest, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        engine, info = await self.engine_for(body.model, request, key)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        self.check_count(len(texts))
        if any(not t for t in texts):
            raise InvalidRequestError("input must not contain empty strings", param="input")
        request.state.record_params = {"inputs": len(texts)}
        try:
            if body.candidate_labels is not None:
                labels = self._check_labels(body.candidate_labels)
                if SCORE not in info.capabilities and CLASSIFY in info.capabilities:
                    raise InvalidRequestError(
                        f"model '{engine.name}' is a classifier with fixed labels "
                        f"{info.labels}; candidate_labels is for zero-shot classification "
                        f"with a model that can score text: "
                        f"{', '.join(self.models_that(SCORE)) or 'none served'}",
                        param="candidate_labels",
                    )
                self.require(engine, info, SCORE)
                probs = await self._zero_shot(
                    engine,
                    info,
                    request,
                    request_id,
                    texts,
                    labels,
                    body.hypothesis_template,
                    truncate=body.truncate,
                )
            else:
                if CLASSIFY not in info.capabilities:
                    raise InvalidRequestError(
                        f"model '{engine.name}' has no labels of its own; give "
                        "candidate_labels for zero-shot classification (models that can: "
                        f"{', '.join(self.models_that(SCORE)) or 'none served'}) or use a "
                        f"classifier ({', '.join(self.models_that(CLASSIFY)) or 'none served'})",
                        param="candidate_labels",
                    )
                labels, probs = await self._classifier(
                    engine, request, request_id, texts, None, body.truncate
                )
        except ClientGone:
            return Response(status_code=499)
        return JSONResponse(
            {
                "object": "list",
                "model": body.model,
                "data": [_item(i, labels, p) for i, p in enumerate(probs)],
                "usage": self._usage(request),
            }
        )

    async def nli(
        self, body: NLIRequest, request: Request, request_id: str, key: KeyInfo | None
    ) -> Response:
        engine, info = await self.engine_for(body.model, request, key)
        pairs = [body.input] if not isinstance(body.input, list) else list(body.input)
        self.check_count(len(pairs))
        if any(not p.premise or not p.hypothesis for p in pairs):
            raise InvalidRequestError("premise and hypothesis must not be empty", param="input")
        request.state.record_params = {"inputs": len(pairs)}
        labels = list(NLI_LABELS)
        try:
            if CLASSIFY in info.capabilities:
                order = nli_label_order(info.labels or [])
                _, raw = await self._classifier(
                    engine,
                    request,
                    request_id,
                    None,
                    [(p.premise, p.hypothesis) for p in pairs],
                    body.truncate,
                )
                probs = [[row[j] for j in order] for row in raw]
            elif SCORE in info.capabilities:
                contexts = [
                    NLI_PROMPT.format(premise=p.premise, hypothesis=p.hypothesis) for p in pairs
                ]
                answers = [NLI_ANSWERS[label] for label in labels]
                probs = await self._score_choices(
                    engine, info, request, request_id, contexts, answers, truncate=body.truncate
                )
            else:
                raise InvalidRequestError(
                    f"model '{engine.name}' can do neither NLI classification nor scoring; "
                    f"NLI classifiers: {', '.join(self.models_that(CLASSIFY)) or 'none served'}; "
                    f"generation models: {', '.join(self.models_that(SCORE)) or 'none served'}",
                    param="model",
                    code="unsupported_task",
                )
        except ClientGone:
            return Response(status_code=499)
        return JSONResponse(
            {
                "object": "list",
                "model": body.model,
                "data": [
                    {**_item(i, labels, p), "scores": dict(zip(labels, p, strict=True))}
                    for i, p in enumerate(probs)
                ],
                "usage": self._usage(request),
            }
        )

    def _check_labels(self, labels: list[str]) -> list[str]:
        if len(labels) < 2:
            raise InvalidRequestError(
                "candidate_labels needs at least two labels", param="candidate_labels"
            )
        if len(labels) > self.limits.max_labels:
            raise InvalidRequestError(
                f"{len(labels)} candidate_labels given; at most {self.limits.max_labels}",
                param="candidate_labels",
            )
        if any(not label.strip() for label in labels) or len(set(labels)) != len(labels):
            raise InvalidRequestError(
                "candidate_labels must be distinct, non-empty strings", param="candidate_labels"
            )
        return labels

    async def _classifier(
        self,
        engine: EngineClient,
        request: Request,
        request_id: str,
        texts: list[str] | None,
        pairs: list[tuple[str, str]] | None,
        truncate: bool,
    ) -> tuple[list[str], list[list[float]]]:
        task = TaskRequest(
            request_id=engine_request_id(request_id, 0),
            kind="classify",
            texts=texts,
            pairs=pairs,
            truncate=truncate,
        )
        result = await self.run(engine, request, task)
        request.state.timing.prompt_tokens = result.prompt_tokens
        request.state.timing.queue_time = result.queue_time
        return list(result.labels or []), result.probs or []

    async def _zero_shot(
        self,
        engine: EngineClient,
        info: ModelInfo,
        request: Request,
        request_id: str,
        texts: list[str],
        labels: list[str],
        template: str,
        *,
        truncate: bool,
    ) -> list[list[float]]:
        before, slot = split_template(template)
        contexts = [f"{t.rstrip()}\n{before}" for t in texts]
        return await self._score_choices(
            engine,
            info,
            request,
            request_id,
            contexts,
            [slot.replace("{}", label, 1) for label in labels],
            truncate=truncate,
        )

    async def _score_choices(
        self,
        engine: EngineClient,
        info: ModelInfo,
        request: Request,
        request_id: str,
        contexts: list[str],
        choices: list[str],
        *,
        truncate: bool,
    ) -> list[list[float]]:
        """Softmax over ``choices`` of log P(choice | context), for every context."""
        ctx_ids = await self.tokenize(engine, request, request_id, contexts, add_special=True)
        choice_ids = await self.tokenize(engine, request, request_id, choices, add_special=False)
        seqs = [c + o for c in ctx_ids for o in choice_ids]
        starts = [len(c) for c in ctx_ids for _ in choice_ids]
        scored = await self.logprobs(
            engine, info, request, request_id, seqs, starts, truncate=truncate
        )
        request.state.timing.prompt_tokens = sum(len(s) for s in seqs)
        k = len(choices)
        totals = [sum(lps) for lps, _ in scored]
        return [softmax(totals[i * k : (i + 1) * k]) for i in range(len(contexts))]

    @staticmethod
    def _usage(request: Request) -> dict[str, int]:
        tokens = request.state.timing.prompt_tokens
        return {"prompt_tokens": tokens, "total_tokens": tokens}
