"""Worker errors over a real channel: a ``WorkerServer`` (with a fake step loop and inline tasks)
on one end of a socket pair, the gateway's ``WorkerChannel`` on the other. Whatever the worker
raises reaches the gateway as the same ``lmaas.errors`` class, message, param and code."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from lmaas.engine.channel import WorkerChannel
from lmaas.errors import ContextLengthExceededError, InternalError, InvalidRequestError
from lmaas.protocol.engine import FinishReason, GenerateRequest, TokenEvent
from lmaas.protocol.tasks import TaskRequest, TaskResult
from lmaas.worker.main import WorkerServer


class FakeLoop:
    """Refuses the prompt "too long"; every request it accepts fails in its first step."""

    steps = 0

    def __init__(self) -> None:
        self.emit: Any = lambda *_: None

    def prepare(self, req: GenerateRequest) -> Any:
        if req.prompt == "too long":
            raise ContextLengthExceededError(
                "the prompt is 9 tokens; this model's limit is 8 tokens", param="prompt"
            )
        return SimpleNamespace(req=req, prompt_ids=[1, 2], max_new_tokens=4)

    def submit(self, active: Any) -> None:
        failed = InternalError("the engine failed to decode (status -3)")
        event = TokenEvent(active.req.request_id, finish_reason=FinishReason.ABORT, error=failed)
        self.emit([event], self.stats())

    def stats(self) -> dict[str, int]:
        return {"running": 0, "waiting": 0}

    def abort(self, request_id: str) -> None:
        pass

    def stop(self) -> None:
        pass


def inline_task(request: TaskRequest) -> TaskResult:
    if request.kind == "detokenize":
        raise InvalidRequestError("token id 10 is outside the vocabulary (0..9)", param="tokens")
    raise RuntimeError("/srv/secret/model.gguf exploded")


@pytest.fixture
async def channel() -> AsyncIterator[WorkerChannel]:
    worker_end, gateway_end = socket.socketpair()
    server = WorkerServer(worker_end, FakeLoop(), {}, inline_task=inline_task)
    reader_thread = threading.Thread(target=server.read_forever, daemon=True)
    reader_thread.start()
    reader, writer = await asyncio.open_connection(sock=gateway_end)
    chan = WorkerChannel(reader, writer, "fake")
    chan.start()
    yield chan
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
