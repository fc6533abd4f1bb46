"""The worker's preparer for requests with a grammar: a build that ends in time is accepted or
refused as it says; one that overruns is refused at once with a 400 and freed when it ends,
and newer ones get a 503 meanwhile; an abort while queued or building drops the request."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from lmaas.errors import InternalError, InvalidRequestError, LmaasError, ServiceUnavailableError
from lmaas.protocol.engine import GenerateRequest, SamplingParams, ToolCallSpec
from lmaas.worker.preparer import SlowPreparer, needs_slow_prepare

WAIT = 10.0  # a runaway guard for waits on other threads, never a speed claim


def request(rid: str, **sampling: Any) -> GenerateRequest:
    schema = sampling.pop("json_schema", {"type": "string"})
    return GenerateRequest(
        request_id=rid, prompt="x", sampling=SamplingParams(json_schema=schema, **sampling)
    )


@dataclass
class Harness:
    """A preparer over a ``prepare`` that blocks on a gate per request (``block``), raises
    for the prompt "bad", and reports what it was told through one queue."""

    gates: dict[str, threading.Event] = field(default_factory=dict)
    started: dict[str, threading.Event] = field(default_factory=dict)
    told: queue.SimpleQueue[tuple[str, str, Any]] = field(default_factory=queue.SimpleQueue)
    preparer: SlowPreparer | None = None

    def block(self, rid: str) -> threading.Event:
        self.gates[rid] = threading.Event()
        self.started[rid] = threading.Event()
        return self.gates[rid]

    def prepare(self, req: GenerateRequest) -> Any:
        rid = req.request_id
        if rid in self.gates:
            self.started[rid].set()
            assert self.gates[rid].wait(WAIT)
        if req.prompt == "bad":
            raise RuntimeError("/secret/path exploded")
        if req.prompt == "refused":
            raise InvalidRequestError("the grammar could not be parsed", param="response_format")
        return {"rid": rid}

    def accept(self, active: Any) -> None:
        self.told.put(("accept", active["rid"], None))

    def reject(self, rid: str, error: LmaasError) -> None:
        self.told.put(("reject", rid, error))

    def release(self, active: Any) -> None:
        self.told.put(("release", active["rid"], None))

    def next(self) -> tuple[str, str, Any]:
        return self.told.get(timeout=WAIT)


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    harness.preparer = SlowPreparer(
        harness.prepare, harness.accept, harness.reject, harness.release, timeout_s=0.5
    )
    yield harness
    for gate in harness.gates.values():
        gate.set()
    harness.preparer.stop()


def test_requests_with_a_grammar_or_a_long_prompt_take_the_slow_path() -> None:
    assert needs_slow_prepare(request("a"))
    plain = GenerateRequest(request_id="b", prompt="x")
    assert not needs_slow_prepare(plain)
    assert needs_slow_prepare(plain.model_copy(update={"sampling": SamplingParams(grammar="x")}))
    # Tokenizing these would hold up the thread that answers health pings.
    assert needs_slow_prepare(GenerateRequest(request_id="c", prompt="x" * 40_000))
    assert needs_slow_prepare(GenerateRequest(request_id="d", prompt=[1] * 40_000))
    spans = [(i, i + 1) for i in range(300)]
    chat = GenerateRequest(request_id="e", prompt="y" * 300, parse_special=True, text_spans=spans)
    assert needs_slow_prepare(chat)
    assert not needs_slow_prepare(GenerateRequest(request_id="f", prompt="x" * 1000))


def test_a_build_in_time_is_accepted(h: Harness) -> None:
    assert h.preparer is not None
    h.preparer.submit(request("a"))
    assert h.next() == ("accept", "a", None)


def test_a_refused_build_is_rejected_with_its_error(h: Harness) -> None:
    assert h.preparer is not None
    h.preparer.submit(request("a").model_copy(update={"prompt": "refused"}))
    kind, rid, error = h.next()
    assert (kind, rid, type(error)) == ("reject", "a", InvalidRequestError)
    assert error.param == "response_format"


def test_a_crashing_build_is_a_500_that_leaks_nothing(h: Harness) -> None:
    assert h.preparer is not None
    h.preparer.submit(request("a").model_copy(update={"prompt": "bad"}))
    kind, rid, error = h.next()
    assert (kind, rid, type(error)) == ("reject", "a", InternalError)
    assert "secret" not in error.message
    h.preparer.submit(request("b"))  # the thread lives on
    assert h.next() == ("accept", "b", None)


def test_an_overrunning_build_is_refused_then_freed_and_blocks_newer_ones(h: Harness) -> None:
    assert h.preparer is not None
    gate = h.block("slow")
    h.preparer.submit(request("slow"))
    kind, rid, error = h.next()  # after timeout_s, while the build still runs
    assert (kind, rid, type(error)) == ("reject", "slow", InvalidRequestError)
    assert error.code == "grammar_timeout" and error.status_code == 400
    assert h.preparer.overrunning == 1

    h.preparer.submit(request("next"))
    kind, rid, error = h.next()
    assert (kind, rid, type(error)) == ("reject", "next", ServiceUnavailableError)

    gate.set()  # the build ends: what it built is freed, never accepted
    assert h.next() == ("release", "slow", None)
    assert h.preparer.overrunning == 0
    h.preparer.submit(request("after"))
    assert h.next() == ("accept", "after", None)


def test_an_abort_while_building_drops_the_request_and_frees_it(h: Harness) -> None:
    assert h.preparer is not None
    gate = h.block("a")
    h.preparer.submit(request("a"))
    assert h.started["a"].wait(WAIT)
    forwarded: list[str] = []
    h.preparer.abort_or("a", forwarded.append)
    gate.set()
    assert h.next() == ("release", "a", None)
    assert forwarded == []


def test_an_abort_while_queued_skips_the_build(h: Harness) -> None:
    assert h.preparer is not None
    gate = h.block("first")
    h.preparer.submit(request("first"))
    assert h.started["first"].wait(WAIT)
    h.block("queued")  # would record that its build started
    h.preparer.submit(request("queued"))
    h.preparer.abort_or("queued", lambda rid: pytest.fail(f"{rid} was still queued"))
    gate.set()
    assert h.next() == ("accept", "first", None)
    h.preparer.submit(request("last"))
    assert h.next() == ("accept", "last", None)  # nothing was told about "queued"
    assert not h.started["queued"].is_set()


def test_an_abort_for_a_request_not_here_goes_to_the_loop(h: Harness) -> None:
    assert h.preparer is not None
    h.preparer.submit(request("a"))
    assert h.next() == ("accept", "a", None)
    forwarded: list[str] = []
    h.preparer.abort_or("a", forwarded.append)
    assert forwarded == ["a"]


def test_an_overrunning_tool_call_grammar_names_the_tools(h: Harness) -> None:
    assert h.preparer is not None
    spec = ToolCallSpec(call_schema={"type": "object"})
    tools = GenerateRequest(request_id="t", prompt="x", sampling=SamplingParams(tool_calls=spec))
    assert needs_slow_prepare(tools)
    gate = h.block("t")
    h.preparer.submit(tools)
    kind, rid, error = h.next()
    assert (kind, rid, error.code, error.param) == ("reject", "t", "grammar_timeout", "tools")
    assert "the tools took longer" in error.message
    gate.set()
    assert h.next() == ("release", "t", None)
