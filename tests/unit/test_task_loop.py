"""The transformers worker's task loop: batching across requests, kinds, limits, failures."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from lmaas.errors import InternalError, InvalidRequestError
from lmaas.protocol.tasks import TaskKind, TaskRequest, TaskResult
from lmaas.worker.tasks import TaskLoop


class FakeModel:
    """Embeds a text as [len(text)]; refuses texts starting with "bad"; can be made to crash."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.crash = False

    def prepare(self, request: TaskRequest) -> TaskRequest:
        if any(t.startswith("bad") for t in request.texts or []):
            raise InvalidRequestError("bad input", param="input")
        return request

    def run_batch(self, kind: TaskKind, prepared: Sequence[Any]) -> list[TaskResult]:
        if self.crash:
            raise RuntimeError("model exploded")
        self.batches.append((kind, [r.request_id for r in prepared]))
        return [
            TaskResult(request_id=r.request_id, probs=[[float(len(t))] for t in r.texts or []])
            for r in prepared
        ]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(max_batch: int = 8, window: float = 0.0) -> tuple[TaskLoop, FakeModel, list[Any]]:
    model = FakeModel()
    out: list[Any] = []
    loop = TaskLoop(
        model,
        lambda rid, res, err: out.append((rid, res, err)),
        max_batch=max_batch,
        window_s=window,
        clock=Clock(),
    )
    return loop, model, out


def req(rid: str, *texts: str, kind: TaskKind = "embed") -> TaskRequest:
    return TaskRequest(request_id=rid, kind=kind, texts=list(texts))


def test_requests_waiting_together_run_in_one_batch() -> None:
    loop, model, out = make()
    for i in range(5):
        loop.submit(req(f"r{i}", "x" * (i + 1)))
    loop.execute(loop.next_batch(block=False))
    assert model.batches == [("embed", ["r0", "r1", "r2", "r3", "r4"])]
    assert [(rid, res.probs, err) for rid, res, err in out] == [
        (f"r{i}", [[float(i + 1)]], None) for i in range(5)
    ]
    assert all(res.batch_size == 5 for _, res, _ in out)


def test_batches_are_capped_by_inputs_and_the_first_request_always_fits() -> None:
    loop, model, _ = make(max_batch=4)
    loop.submit(req("big", *["a"] * 6))  # more inputs than a batch: runs alone
    loop.submit(req("a", "a", "a", "a"))  # 3 inputs
    loop.submit(req("b", "b", "b"))  # 2: would overflow, waits for the next batch
    loop.submit(req("c", "c"))  # 1: joins "b" (arrival order is kept)
    while batch := loop.next_batch(block=False):
        loop.execute(batch)
    assert [ids for _, ids in model.batches] == [["big"], ["a"], ["b", "c"]]


def test_kinds_are_never_mixed_and_the_oldest_kind_goes_first() -> None:
    loop, model, _ = make()
    loop.submit(req("e1", "x"))
    loop.submit(req("c1", "x", kind="classify"))
    loop.submit(req("e2", "y"))
    while batch := loop.next_batch(block=False):
        loop.execute(batch)
    assert model.batches == [("embed", ["e1", "e2"]), ("classify", ["c1"])]


def test_a_bad_request_fails_alone() -> None:
    loop, model, out = make()
    loop.submit(req("ok1", "fine"))
    loop.submit(req("bad", "bad text"))
    loop.submit(req("ok2", "also fine"))
    loop.execute(loop.next_batch(block=False))
    assert model.batches == [("embed", ["ok1", "ok2"])]
    errors = {rid: err for rid, _, err in out if err is not None}
    assert list(errors) == ["bad"]
    assert isinstance(errors["bad"], InvalidRequestError)
    assert (errors["bad"].message, errors["bad"].param) == ("bad input", "input")


def test_a_model_crash_fails_the_batch_with_500_and_the_loop_goes_on() -> None:
    loop, model, out = make()
    model.crash = True
    loop.submit(req("a", "x"))
    loop.execute(loop.next_batch(block=False))
    assert out[0][0] == "a" and isinstance(out[0][2], InternalError)
    assert "exploded" not in out[0][2].message  # no internals leak
    model.crash = False
    loop.submit(req("b", "x"))
    loop.execute(loop.next_batch(block=False))
    assert out[-1][0] == "b" and out[-1][1] is not None


def test_the_window_collects_requests_that_arrive_while_waiting() -> None:
    model = FakeModel()
    out: list[Any] = []
    loop = TaskLoop(model, lambda *a: out.append(a), max_batch=64, window_s=0.5)
    loop.submit(req("first", "x"))
    late = threading.Timer(0.05, lambda: loop.submit(req("late", "y")))
    late.start()
    batch = loop.next_batch(block=True)
    late.join()
    assert [q.request.request_id for q in batch] == ["first", "late"]


def test_a_full_batch_does_not_wait_for_the_window() -> None:
    model = FakeModel()
    loop = TaskLoop(model, lambda *a: None, max_batch=2, window_s=30.0)
    loop.submit(req("a", "x"))
    loop.submit(req("b", "y"))
    batch = loop.next_batch(block=True)  # would hang 30 s if it waited for the window
    assert len(batch) == 2


def test_run_stops_when_asked() -> None:
    loop, _, _ = make()
    thread = threading.Thread(target=loop.run)
    thread.start()
    loop.submit(req("a", "x"))
    loop.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
