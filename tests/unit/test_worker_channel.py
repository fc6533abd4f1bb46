"""Worker errors over a real channel: a ``WorkerServer`` (with a fake step loop and inline tasks)
on one end of a socket pair, the gateway's ``WorkerChannel`` on the other. Whatever the worker
raises reaches the gateway as the same ``lmaas.errors`` class, message, param and code; a
request whose grammar takes long to build never keeps the worker from answering pings."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from lmaas.engine.channel import WorkerChannel
from lmaas.errors import ContextLengthExceededError, InternalError, InvalidRequestError
from lmaas.protocol.engine import FinishReason, GenerateRequest, SamplingParams, TokenEvent
from lmaas.protocol.tasks import TaskRequest, TaskResult
from lmaas.worker.main import WorkerServer


class FakeLoop:
    """Refuses the prompt "too long"; every request it accepts fails in its first step. A
    request with a JSON schema takes until ``grammar_built`` is set to prepare."""

    steps = 0

    def __init__(self) -> None:
        self.emit: Any = lambda *_: None
        self.grammar_started = threading.Event()
        self.grammar_built = threading.Event()
        self.discarded: list[str] = []
        self.submitted: list[str] = []

    def prepare(self, req: GenerateRequest) -> Any:
        if req.sampling.json_schema is not None:
            self.grammar_started.set()
            assert self.grammar_built.wait(10)
        if req.prompt == "too long":
            raise ContextLengthExceededError(
                "the prompt is 9 tokens; this model's limit is 8 tokens", param="prompt"
            )
        return SimpleNamespace(req=req, prompt_ids=[1, 2], max_new_tokens=4)

    def submit(self, active: Any) -> None:
        self.submitted.append(active.req.request_id)
        failed = InternalError("the engine failed to decode (status -3)")
        event = TokenEvent(active.req.request_id, finish_reason=FinishReason.ABORT, error=failed)
        self.emit([event], self.stats())

    def stats(self) -> dict[str, int]:
        return {"running": 0, "waiting": 0}

    def abort(self, request_id: str) -> None:
        pass

    def discard(self, active: Any) -> None:
        self.discarded.append(active.req.request_id)

    def stop(self) -> None:
        pass


def inline_task(request: TaskRequest) -> TaskResult:
    if request.kind == "detokenize":
        raise InvalidRequestError("token id 10 is outside the vocabulary (0..9)", param="tokens")
    raise RuntimeError("/srv/secret/model.gguf exploded")


@pytest.fixture
def loop() -> FakeLoop:
    return FakeLoop()


@pytest.fixture
async def channel(loop: FakeLoop) -> AsyncIterator[WorkerChannel]:
    worker_end, gateway_end = socket.socketpair()
    server = WorkerServer(worker_end, loop, {}, inline_task=inline_task, grammar_timeout_s=0.5)
    reader_thread = threading.Thread(target=server.read_forever, daemon=True)
    reader_thread.start()
    reader, writer = await asyncio.open_connection(sock=gateway_end)
    chan = WorkerChannel(reader, writer, "fake")
    chan.start()
    yield chan
    loop.grammar_built.set()
    chan.close()  # the worker reads the end of the stream and its reader thread returns
    await asyncio.to_thread(reader_thread.join, 10)
    assert not reader_thread.is_alive()
    worker_end.close()


async def _generate(chan: WorkerChannel, prompt: str) -> list[TokenEvent]:
    return [e async for e in chan.generate(GenerateRequest(request_id="g", prompt=prompt))]


async def test_a_refused_prompt_is_raised_as_its_own_class(channel: WorkerChannel) -> None:
    with pytest.raises(ContextLengthExceededError) as err:
        await _generate(channel, "too long")
    assert err.value.to_body() == {
        "error": {
            "message": "the prompt is 9 tokens; this model's limit is 8 tokens",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "context_length_exceeded",
        }
    }


async def test_a_failure_after_acceptance_ends_the_stream(channel: WorkerChannel) -> None:
    with pytest.raises(InternalError) as err:
        await _generate(channel, "fine")
    assert err.value.message == "the engine failed to decode (status -3)"
    assert err.value.status_code == 500 and err.value.code == "internal_error"


async def test_a_refused_task_is_raised_as_its_own_class(channel: WorkerChannel) -> None:
    request = TaskRequest(request_id="t", kind="detokenize", token_ids=[[10]])
    with pytest.raises(InvalidRequestError) as err:
        await channel.run_task(request)
    assert type(err.value) is InvalidRequestError
    assert err.value.to_body()["error"] == {
        "message": "token id 10 is outside the vocabulary (0..9)",
        "type": "invalid_request_error",
        "param": "tokens",
        "code": None,
    }


async def test_a_crashed_task_is_a_500_that_leaks_nothing(channel: WorkerChannel) -> None:
    with pytest.raises(InternalError) as err:
        await channel.run_task(TaskRequest(request_id="t", kind="tokenize", texts=["x"]))
    assert err.value.message == "the model failed to run this request"
    assert "secret" not in str(err.value.to_body())


async def test_pings_are_answered_while_a_grammar_builds(
    channel: WorkerChannel, loop: FakeLoop
) -> None:
    schema = SamplingParams(json_schema={"type": "string"})
    request = GenerateRequest(request_id="g", prompt="fine", sampling=schema)
    stream = asyncio.ensure_future(_collect(channel, request))
    for _ in range(3):
        pong = await channel.ping(timeout=5)
        assert pong["k"] == "pong"
    assert not stream.done()
    loop.grammar_built.set()
    with pytest.raises(InternalError):  # accepted, then fails in its first step (FakeLoop)
        await asyncio.wait_for(stream, 10)


async def test_a_grammar_past_its_time_limit_is_refused_and_the_worker_lives_on(
    channel: WorkerChannel, loop: FakeLoop
) -> None:
    schema = SamplingParams(json_schema={"type": "string"})
    request = GenerateRequest(request_id="slow", prompt="fine", sampling=schema)
    with pytest.raises(InvalidRequestError) as err:
        await asyncio.wait_for(_collect(channel, request), 10)
    assert err.value.code == "grammar_timeout" and err.value.param == "response_format"
    assert (await channel.ping(timeout=5))["k"] == "pong"
    with pytest.raises(ContextLengthExceededError):  # plain requests still run as before
        await _generate(channel, "too long")
    loop.grammar_built.set()
    await asyncio.to_thread(_wait_for, lambda: loop.discarded == ["slow"])


async def test_a_client_gone_while_its_grammar_builds_is_dropped_by_the_worker(
    channel: WorkerChannel, loop: FakeLoop
) -> None:
    schema = SamplingParams(json_schema={"type": "string"})
    request = GenerateRequest(request_id="gone", prompt="fine", sampling=schema)
    stream = asyncio.ensure_future(_collect(channel, request))
    assert await asyncio.to_thread(loop.grammar_started.wait, 10)
    stream.cancel()  # the client leaves before the worker has accepted the request
    with pytest.raises(asyncio.CancelledError):
        await stream
    assert (await channel.ping(timeout=5))["k"] == "pong"  # the abort was read before this
    loop.grammar_built.set()
    await asyncio.to_thread(_wait_for, lambda: loop.discarded == ["gone"])
    assert loop.submitted == []


async def _collect(chan: WorkerChannel, request: GenerateRequest) -> list[TokenEvent]:
    return [e async for e in chan.generate(request)]


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
