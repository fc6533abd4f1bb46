"""Fakes for tests without a model or a subprocess: an engine for in-process integration tests,
and a cluster of replicas for the router and the deployment controller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from lmaas.engine.client import EngineClient, EngineHealth, ReplicaHealth
from lmaas.engine.replica import ReplicaLoad
from lmaas.errors import InvalidRequestError, ServiceUnavailableError
from lmaas.protocol.engine import (
    BeamResult,
    FinishReason,
    GenerateRequest,
    ModelInfo,
    TokenEvent,
    TokenLogprob,
)
from lmaas.protocol.tasks import TaskRequest, TaskResult

N_VOCAB = 1000
MAX_MODEL_LEN = 8192


def fake_info(name: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        path="/fake.gguf",
        n_vocab=N_VOCAB,
        n_ctx_train=MAX_MODEL_LEN,
        max_model_len=MAX_MODEL_LEN,
        context_size=1024,
        max_num_seqs=4,
        chat_template=None,
        bos_token="<s>",
        eos_token="</s>",
        add_bos=False,
        architecture="fake",
        n_params=1,
        size_bytes=1,
    )


class FakeEngine(EngineClient):
    """Emits ``w0 w1 w2 ...`` one word per token. A text prompt is one token per word.

    ``ready=False`` mimics a dead worker; ``hold`` makes generation wait until released so
    tests can fill the queue; ``fail_midstream`` breaks the stream after two tokens.
    """

    def __init__(self, name: str = "fake", *, max_num_seqs: int = 4) -> None:
        self.name = name
        self.ready = True
        self.max_num_seqs = max_num_seqs
        self.hold: asyncio.Event | None = None
        self.fail_midstream = False
        self.requests: list[GenerateRequest] = []
        self.aborted: list[str] = []
        self._outstanding: set[str] = set()
        # Tokens/s of one running sequence, as a worker would have measured it (None: unknown).
        self.rate: float | None = None

    @property
    def info(self) -> ModelInfo | None:
        return fake_info(self.name) if self.ready else None

    @property
    def capacity(self) -> int:
        return self.max_num_seqs if self.ready else 0

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    @property
    def sequence_rate(self) -> float | None:
        return self.rate

    def health(self) -> EngineHealth:
        state = "ready" if self.ready else "failed"
        return EngineHealth(
            ready=self.ready,
            running=len(self._outstanding),
            replicas=[ReplicaHealth(id="fake-0", index=0, state=state, node="test")],
        )

    @staticmethod
    def _beams(request: GenerateRequest, prompt_len: int, max_new: int) -> TokenEvent:
        """Beam j is ``w0 .. w{max_new-2} b{j}``, each token at logprob -0.5 - j/10."""
        assert request.beam is not None
        beams = []
        for j in range(request.beam.n):
            words = [f" w{i}" for i in range(max_new - 1)] + [f" b{j}"]
            lp = -0.5 - j / 10
            logprobs = None
            if request.logprobs is not None:
                logprobs = [
                    TokenLogprob(i, w, list(w.encode()), lp, [(i, w, list(w.encode()), lp)])
                    for i, w in enumerate(words)
                ]
            beams.append(
                BeamResult(
                    token_ids=list(range(max_new)),
                    text="".join(words),
                    finish_reason=FinishReason.LENGTH,
                    cumulative_logprob=lp * max_new,
                    score=lp * max_new / max_new**request.beam.length_penalty,
                    logprobs=logprobs,
                )
            )
        return TokenEvent(
            request.request_id,
            finish_reason=FinishReason.LENGTH,
            prompt_tokens=prompt_len,
            completion_tokens=max_new * request.beam.n,
            beams=beams,
        )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def generate(  # noqa: C901, PLR0915 - fakes every generation option
        self, request: GenerateRequest
    ) -> AsyncIterator[TokenEvent]:
        if not self.ready:
            raise ServiceUnavailableError("fake worker down")
        prompt = request.prompt
        prompt_len = len(prompt.split()) if isinstance(prompt, str) else len(prompt)
        if prompt_len == 0:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if isinstance(request.prompt, list) and any(t >= N_VOCAB for t in request.prompt):
            raise InvalidRequestError("token id outside the vocabulary", param="prompt")
        if prompt_len >= MAX_MODEL_LEN:
            raise InvalidRequestError("prompt too long", param="prompt")
        max_new = request.max_tokens if request.max_tokens is not None else 8
        if prompt_len + max_new > MAX_MODEL_LEN:
            raise InvalidRequestError("too long", param="max_tokens")
        self.requests.append(request)
        rid = request.request_id
        self._outstanding.add(rid)
        finished = False
        try:
            if self.hold is not None:
                await self.hold.wait()
            if request.beam is not None:
                finished = True
                yield self._beams(request, prompt_len, max_new)
                return
            text_so_far = ""
            for i in range(max_new):
                if self.fail_midstream and i == 2:
                    raise ServiceUnavailableError("the worker serving this model stopped")
                word = f" w{i}"
                text_so_far += word
                hit = next((s for s in request.stop if s in text_so_far), None)
                lp = None
                if request.logprobs is not None:
                    top = [(i, word, list(word.encode()), -0.5)] * request.logprobs
                    lp = [TokenLogprob(i, word, list(word.encode()), -0.5, top)]
                if hit is not None:
                    finished = True
                    yield TokenEvent(
                        rid,
                        text="",
                        finish_reason=FinishReason.STOP,
                        prompt_tokens=prompt_len,
                        completion_tokens=i + 1,
                    )
                    return
                last = i == max_new - 1
                plp = None
                if i == 0 and request.prompt_logprobs is not None:
                    plp = [TokenLogprob(0, "p", [112], None)] + [
                        TokenLogprob(1, "p", [112], -1.0) for _ in range(prompt_len - 1)
                    ]
                finished = last
                yield TokenEvent(
                    rid,
                    text=word,
                    token_ids=[i],
                    logprobs=lp,
                    finish_reason=FinishReason.LENGTH if last else None,
                    prompt_tokens=prompt_len,
                    completion_tokens=i + 1,
                    queue_time=0.001,
                    prompt_logprobs=plp,
                )
                await asyncio.sleep(0)
            if max_new == 0:
                finished = True
                yield TokenEvent(
                    rid,
                    finish_reason=FinishReason.LENGTH,
                    prompt_tokens=prompt_len,
                    prompt_logprobs=[TokenLogprob(0, "p", [112], None)],
                )
        finally:
            self._outstanding.discard(rid)
            if not finished:
                self.aborted.append(rid)


class FakeReplica:
    """A replica without a process, for the router and the controller (``lmaas.engine.replica``).

    It becomes ready on ``start`` unless its cluster says replicas fail to load. Generation
    holds every request until ``release`` is set, then emits one token; ``die_before_first``
    makes the next request find the replica dead (as a killed worker looks to the router).
    """

    def __init__(self, model: Any, index: int, *, loads: bool = True) -> None:
        self.model = model
        self.index = index
        self.id = f"fake-{model.name}-{index}"
        self.node = "test-node"
        self.label = f"{model.name}#{index}"
        self.version: int | None = model.version
        self.state = "stopped"
        self.last_error: str | None = None
        self.stopped_now: bool | None = None  # how it was stopped, once it was
        self.release = asyncio.Event()
        self.die_before_first = False
        self.aborted: list[str] = []
        self.seen: list[str] = []  # ids of the requests sent to it
        self._loads = loads
        self._inflight: set[str] = set()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def capacity(self) -> int:
        return 4 if self.ready else 0

    @property
    def info(self) -> ModelInfo | None:
        return fake_info(self.model.name) if self.ready else None

    def load(self) -> ReplicaLoad:
        return ReplicaLoad(len(self._inflight), len(self._inflight), 0)

    def health(self) -> ReplicaHealth:
        return ReplicaHealth(
            id=self.id,
            index=self.index,
            state=self.state,
            node=self.node,
            version=self.version,
            last_error=self.last_error,
            outstanding=len(self._inflight),
        )

    async def start(self) -> None:
        if self._loads:
            self.state = "ready"
        else:
            self.state, self.last_error = "failed", "cannot load"

    async def wait_ready(self, timeout: float) -> bool:
        return self.ready

    async def stop(self, *, now: bool = False) -> None:
        self.state, self.stopped_now = "stopped", now

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        rid = request.request_id
        self.seen.append(rid)
        self._inflight.add(rid)
        try:
            if self.die_before_first:
                self.state = "failed"
                raise ServiceUnavailableError(f"{self.label} stopped")
            await self.release.wait()
            yield TokenEvent(rid, token_ids=[1], text="x", finish_reason=FinishReason.LENGTH)
        finally:
            self._inflight.discard(rid)

    async def run_task(self, request: TaskRequest) -> TaskResult:
        self.seen.append(request.request_id)
        if self.die_before_first:
            self.state = "failed"
            raise ServiceUnavailableError(f"{self.label} stopped")
        return TaskResult(request_id=request.request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


class FakeCluster:
    """Makes ``FakeReplica``s; ``loads = False`` makes the next ones fail to start."""

    kind = "fake"

    def __init__(self, settings: Any = None, store: Any = None) -> None:
        self.loads = True
        self.made: list[FakeReplica] = []
        self.closed = False
        self.offers: Any = None  # the Capacity it reports (None: no resource pool)

    def check(self, model: Any) -> None:
        pass

    def capacity(self) -> Any:
        return self.offers

    def new_replica(self, model: Any, *, index: int) -> FakeReplica:
        replica = FakeReplica(model, index, loads=self.loads)
        self.made.append(replica)
        return replica

    async def close(self) -> None:
        self.closed = True
