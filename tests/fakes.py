"""A fake engine for in-process integration tests (no model, no subprocess)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from lmaas.engine.client import EngineClient, EngineHealth, ReplicaHealth
from lmaas.errors import InvalidRequestError, ServiceUnavailableError
from lmaas.protocol.engine import (
    BeamResult,
    FinishReason,
    GenerateRequest,
    ModelInfo,
    TokenEvent,
    TokenLogprob,
)

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

    @property
    def info(self) -> ModelInfo | None:
        return fake_info(self.name) if self.ready else None

    @property
    def capacity(self) -> int:
        return self.max_num_seqs if self.ready else 0

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def health(self) -> EngineHealth:
        state = "ready" if self.ready else "failed"
        return EngineHealth(
            ready=self.ready,
            running=len(self._outstanding),
            replicas=[ReplicaHealth(index=0, state=state)],
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

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
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
