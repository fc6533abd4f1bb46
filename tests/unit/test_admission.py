"""Admission by count and by estimated time (gateway/serving/admission.py), and its inputs:
the worker's measured token rate (engine/rate.py) and the step-time cap (worker/loop.py)."""

from __future__ import annotations

import pytest

from lmaas.config import Limits
from lmaas.engine.rate import TokenRate
from lmaas.errors import InvalidRequestError, OverloadedError, ServiceUnavailableError
from lmaas.gateway.serving.admission import Admission, Deadline, client_deadline, estimate
from lmaas.worker.scheduler.cap import StepTimeCap
from tests.fakes import FakeEngine


def engine(slots: int = 2, rate: float | None = 10.0) -> FakeEngine:
    e = FakeEngine("m", max_num_seqs=slots)
    e.rate = rate
    return e


# --- the estimate ---------------------------------------------------------------------------


def test_estimate_when_idle_is_the_own_work_alone() -> None:
    assert estimate([], [], 50, slots=4, per_seq_rate=10) == (0.0, 5.0)


def test_estimate_waits_for_the_first_slot_to_free() -> None:
    # Two slots busy with 10 and 20 tokens left, 30 waiting: the waiting one takes the slot
    # freed at 10; the newcomer takes the one freed at 20 and needs 5 more.
    start, finish = estimate([10, 20], [30], 5, slots=2, per_seq_rate=10)
    assert (start, finish) == (2.0, 2.5)


def test_estimate_with_a_free_slot_starts_at_once() -> None:
    assert estimate([100], [], 10, slots=2, per_seq_rate=10) == (0.0, 1.0)


# --- counting -------------------------------------------------------------------------------


def test_reservations_never_overshoot_the_count_bound() -> None:
    a = Admission(Limits(max_queue=2))
    e = engine(slots=4, rate=None)
    tickets = [a.admit(e, sequences=1, max_tokens=8) for _ in range(6)]
    with pytest.raises(OverloadedError):
        a.admit(e, sequences=1, max_tokens=8)
    tickets[0].release()
    tickets[0].release()  # idempotent: frees one sequence, not two
    a.admit(e, sequences=1, max_tokens=8)
    with pytest.raises(OverloadedError):
        a.admit(e, sequences=1, max_tokens=8)
    assert a.load("m").reserved == 6


def test_a_model_without_a_ready_replica_is_503() -> None:
    e = engine()
    e.ready = False
    with pytest.raises(ServiceUnavailableError):
        Admission(Limits()).admit(e, sequences=1, max_tokens=8)


# --- time -----------------------------------------------------------------------------------


def test_a_deadline_that_cannot_be_met_is_refused_with_the_estimated_delay() -> None:
    a = Admission(Limits(max_queue=100))
    e = engine(slots=1, rate=10.0)
    a.admit(e, sequences=1, max_tokens=100)  # 10 s of work on the only slot
    with pytest.raises(OverloadedError) as err:
        a.admit(e, sequences=1, max_tokens=20, deadline=Deadline(5))
    # It would finish at 10 + 2 = 12 s: 7 s too late for a 5 s deadline.
    assert err.value.headers["Retry-After"] == "7"
    a.admit(e, sequences=1, max_tokens=20, deadline=Deadline(12.5))


def test_without_a_deadline_only_the_wait_to_start_is_bounded() -> None:
    a = Admission(Limits(max_queue=100, max_queue_wait=30))
    e = engine(slots=1, rate=10.0)
    a.admit(e, sequences=1, max_tokens=200)  # the slot is busy for 20 s
    a.admit(e, sequences=1, max_tokens=4000)  # starts after 20 s: within 30, however long
    with pytest.raises(OverloadedError) as err:
        a.admit(e, sequences=1, max_tokens=10)  # would start after 420 s
    assert int(err.value.headers["Retry-After"]) == 420 - 30


def test_a_stream_with_an_sdk_read_timeout_is_bounded_by_its_start() -> None:
    a = Admission(Limits(max_queue=100))
    e = engine(slots=1, rate=10.0)
    a.admit(e, sequences=1, max_tokens=100)
    a.admit(e, sequences=1, max_tokens=1000, deadline=Deadline(11, whole=False))
    with pytest.raises(OverloadedError):
        a.admit(e, sequences=1, max_tokens=10, deadline=Deadline(11, whole=False))


def test_a_flood_from_one_tenant_does_not_count_against_another() -> None:
    a = Admission(Limits(max_queue=1000, max_queue_wait=1000))
    e = engine(slots=2, rate=10.0)
    for _ in range(40):  # key A: 40 requests of 10 s each on 2 slots: 200 s of backlog
        a.admit(e, sequences=1, max_tokens=100, tenant="A")
    with pytest.raises(OverloadedError):
        a.admit(e, sequences=1, max_tokens=100, tenant="A", deadline=Deadline(25))
    # B is next in the fair queue after one of A's: it starts when the second slot of the
    # two busy ones frees (10 s) and is done 10 s later.
    a.admit(e, sequences=1, max_tokens=100, tenant="B", deadline=Deadline(25))


def test_expected_lengths_learn_from_requests_that_stop_early() -> None:
    a = Admission(Limits())
    e = engine(slots=1, rate=None)
    for _ in range(60):
        a.admit(e, sequences=1, max_tokens=100).release(completion_tokens=20)
    load = a.load("m")
    assert load.fill is not None and abs(load.fill - 0.2) < 0.01
    assert 20 < load.expected(100) < 40
    # A request that was cut short teaches nothing.
    a.admit(e, sequences=1, max_tokens=100).release()
    assert abs(load.fill - 0.2) < 0.01


def test_produced_tokens_shorten_what_a_request_has_left() -> None:
    a = Admission(Limits())
    t = a.admit(engine(rate=None), sequences=2, max_tokens=50)
    t.produced = 60  # 30 each
    assert t.remaining == 20


# --- the client's deadline ------------------------------------------------------------------


def test_client_deadline_headers() -> None:
    assert client_deadline({}, stream=False) is None
    assert client_deadline({"x-lmaas-deadline": "2.5"}, stream=True) == Deadline(2.5)
    assert client_deadline({"x-stainless-read-timeout": "600"}, stream=True) == Deadline(
        600, whole=False
    )
    assert client_deadline({"x-stainless-read-timeout": "600"}, stream=False) == Deadline(600)
    assert client_deadline({"x-stainless-read-timeout": "nan"}, stream=False) is None
    for bad in ("0", "-1", "soon", "inf", "1e9"):
        with pytest.raises(InvalidRequestError):
            client_deadline({"x-lmaas-deadline": bad}, stream=False)


# --- the measured rate ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_token_rate_per_sequence_and_in_total() -> None:
    clock = Clock()
    r = TokenRate(clock, min_interval=0.5)
    generated = 0
    for _ in range(20):  # 4 sequences, 0.1 s steps, one token each per step
        r.update(generated, 4)
        clock.t += 0.1
        generated += 4
    assert r.per_sequence is not None and r.total is not None
    assert abs(r.per_sequence - 10.0) < 0.01
    assert abs(r.total - 40.0) < 0.01


def test_token_rate_ignores_idle_gaps_and_restarts() -> None:
    clock = Clock()
    r = TokenRate(clock, min_interval=0.5, max_gap=2.0)
    r.update(0, 1)
    clock.t = 0.6
    r.update(6, 1)
    assert r.per_sequence == pytest.approx(10.0)
    clock.t = 30.0  # idle for half a minute, then one token: not a rate of 1/30
    r.update(7, 1)
    assert r.per_sequence == pytest.approx(10.0)
    r.update(0, 1)  # the worker restarted: its count begins again
    clock.t = 30.6
    r.update(6, 1)
    assert r.per_sequence == pytest.approx(10.0)


def test_step_time_cap_follows_the_target() -> None:
    cap = StepTimeCap(8, target_ms=100, every=1)
    assert cap.observe(0.2, running=8) == 7  # too slow: one fewer than are running
    for _ in range(10):
        cap.observe(0.2, running=cap.cap)
    assert cap.cap == 1
    for _ in range(50):  # fast again: back up, one at a time, while the cap is what limits
        cap.observe(0.01, running=cap.cap)
    assert cap.cap == 8
    assert StepTimeCap(8, None).observe(10.0, running=8) == 8


def test_estimates_are_calibrated_by_how_long_requests_really_took() -> None:
    clock = Clock()
    a = Admission(Limits(max_queue=100), clock)
    e = engine(slots=1, rate=10.0)
    for _ in range(20):  # each estimated at 1 s (10 tokens at 10 tokens/s), each took 2 s
        t = a.admit(e, sequences=1, max_tokens=10)
        clock.t += 2.0
        t.release(completion_tokens=10)
    assert a.load("m").calibration == pytest.approx(2.0)
    # Behind one 10-token request, a 10-token one is estimated at 2 s raw: 4 s calibrated.
    a.admit(e, sequences=1, max_tokens=10)
    with pytest.raises(OverloadedError):
        a.admit(e, sequences=1, max_tokens=10, deadline=Deadline(3))
    a.admit(e, sequences=1, max_tokens=10, deadline=Deadline(4.5))


def test_a_request_with_a_free_slot_is_admitted_whatever_the_estimate() -> None:
    a = Admission(Limits(max_queue=100))
    e = engine(slots=2, rate=1.0)
    # 100 s of work estimated against a 1 s deadline, but a slot is free and nobody waits:
    # only running it tells whether the estimate was right.
    a.admit(e, sequences=1, max_tokens=100, deadline=Deadline(1))
    a.admit(e, sequences=1, max_tokens=100, deadline=Deadline(1))
    with pytest.raises(OverloadedError):
        a.admit(e, sequences=1, max_tokens=100, deadline=Deadline(1))


def test_a_request_cut_short_teaches_only_when_it_was_already_late() -> None:
    clock = Clock()
    a = Admission(Limits(max_queue=100), clock)
    e = engine(slots=1, rate=10.0)
    for _ in range(10):  # clients that left early: no lesson
        t = a.admit(e, sequences=1, max_tokens=10)
        clock.t += 0.5
        t.release()
    assert a.load("m").calibration == 1.0 and not a.load("m").ratios
    for _ in range(10):  # clients that gave up after 3x the estimate: slower than thought
        t = a.admit(e, sequences=1, max_tokens=10)
        clock.t += 3.0
        t.release()
    assert a.load("m").calibration == pytest.approx(3.0)


def test_a_batch_is_never_ahead_of_an_interactive_request() -> None:
    a = Admission(Limits(max_queue=1000, max_queue_wait=1000))
    e = engine(slots=2, rate=10.0)
    for _ in range(40):  # 40 batch lines of 10 s each: 200 s of backlog at class 1
        a.admit(e, sequences=1, max_tokens=100, tenant="A", rank=1)
    with pytest.raises(OverloadedError):
        a.admit(e, sequences=1, max_tokens=100, tenant="A", rank=1, deadline=Deadline(30))
    # An interactive request takes a batch line's slot at once (the worker preempts it).
    a.admit(e, sequences=1, max_tokens=10, tenant="A", rank=0, deadline=Deadline(1.5))
    # A second one waits for the first interactive only, not for the batch.
    a.admit(e, sequences=1, max_tokens=10, tenant="B", rank=0, deadline=Deadline(1.5))
    with pytest.raises(OverloadedError):  # a third: both slots are interactive now
        a.admit(e, sequences=1, max_tokens=10, tenant="C", rank=0, deadline=Deadline(1.5))
