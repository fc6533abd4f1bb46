"""What the scheduler counts for the metrics: preemptions by reason, KV cells in use."""

from __future__ import annotations

from lmaas.worker.scheduler import Scheduler, SchedulerConfig


def step(s: Scheduler) -> list[str]:
    """One engine step; returns the requests preempted in it."""
    plan = s.schedule()
    s.update_from_output(plan, {w.request_id: 7 for w in plan.work if w.sample})
    return plan.preempted


def test_preemptions_for_room_are_counted_as_kv_cache() -> None:
    s = Scheduler(SchedulerConfig(4, 64, 12))
    s.add_request("old", [1, 2, 3, 4], max_new_tokens=8)
    s.add_request("young", [5, 6, 7, 8], max_new_tokens=8)
    assert s.preemptions == {"kv_cache": 0, "fairness": 0}
    preempted = [rid for _ in range(5) for rid in step(s)]
    assert preempted == ["young"]
    assert s.preemptions == {"kv_cache": 1, "fairness": 0}
    assert 0 < s.kv_used <= 12


def test_preemptions_for_a_fair_share_or_a_higher_class_are_counted_as_fairness() -> None:
    s = Scheduler(SchedulerConfig(2, 64, 100_000))
    s.add_request("A-0", [1, 2], max_new_tokens=50, tenant="A")
    s.add_request("A-1", [1, 2], max_new_tokens=50, tenant="A")
    step(s)
    s.add_request("B-0", [3, 4], max_new_tokens=50, tenant="B")
    assert step(s) == ["A-1"]
    assert s.preemptions == {"kv_cache": 0, "fairness": 1}
    s = Scheduler(SchedulerConfig(2, 64, 100_000))
    s.add_request("A-0", [1, 2], max_new_tokens=50, tenant="A", rank=0)
    s.add_request("A-1", [1, 2], max_new_tokens=50, tenant="A", rank=2)
    step(s)
    s.add_request("A-2", [1, 2], max_new_tokens=50, tenant="A", rank=0)
    assert step(s) == ["A-1"]  # a background request gives way to an interactive one
    assert s.preemptions == {"kv_cache": 0, "fairness": 1}
