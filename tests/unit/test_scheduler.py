"""The scheduler, driven step by step with a fake model (no I/O)."""

from __future__ import annotations

import pytest

from lmaas.worker.scheduler import Scheduler, SchedulerConfig, StepPlan


def make(max_num_seqs: int = 4, max_batch_tokens: int = 16, kv_capacity: int = 1000) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs, max_batch_tokens, kv_capacity))


def run_step(s: Scheduler, next_token: int = 7) -> tuple[StepPlan, dict[str, int | None]]:
    """Schedule, 'decode', sample ``next_token`` for every sampling sequence, commit."""
    plan = s.schedule()
    sampled = {w.request_id: next_token for w in plan.work if w.sample}
    updates = s.update_from_output(plan, sampled)
    return plan, {u.request_id: u.new_token for u in updates}


def test_short_prompt_prefills_then_decodes_one_token_per_step() -> None:
    s = make()
    s.add_request("a", [1, 2, 3], max_new_tokens=3)
    plan, out = run_step(s)
    assert [w.token_ids for w in plan.work] == [(1, 2, 3)]
    assert plan.work[0].start_pos == 0 and plan.work[0].sample
    assert plan.admitted == ["a"]
    assert out == {"a": 7}
    plan, _ = run_step(s, next_token=8)
    assert plan.work[0].token_ids == (7,) and plan.work[0].start_pos == 3
    plan, _ = run_step(s, next_token=9)
    assert plan.work[0].token_ids == (8,) and plan.work[0].start_pos == 4
    assert s.get("a") is not None and s.get("a").tokens == [1, 2, 3, 7, 8, 9]  # type: ignore[union-attr]


def test_length_limit_is_reported() -> None:
    s = make()
    s.add_request("a", [1], max_new_tokens=2)
    plan = s.schedule()
    ups = s.update_from_output(plan, {"a": 5})
    assert not ups[0].finished_by_length
    plan = s.schedule()
    ups = s.update_from_output(plan, {"a": 6})
    assert ups[0].finished_by_length


def test_long_prompt_is_chunked_and_decodes_keep_running() -> None:
    s = make(max_batch_tokens=8)
    s.add_request("short", [1, 2], max_new_tokens=10)
    run_step(s)  # short is now decoding
    s.add_request("long", list(range(100, 120)), max_new_tokens=5)  # 20 tokens
    chunks = []
    for _ in range(3):
        plan, _ = run_step(s)
        by_id = {w.request_id: w for w in plan.work}
        # The decoding sequence gets its token in every step, before any prefill chunk.
        assert plan.work[0].request_id == "short" and len(by_id["short"].token_ids) == 1
        assert plan.num_tokens <= 8
        chunks.append(by_id["long"])
    assert [len(c.token_ids) for c in chunks] == [7, 7, 6]
    assert [c.start_pos for c in chunks] == [0, 7, 14]
    assert [c.sample for c in chunks] == [False, False, True]


def test_new_request_joins_at_next_step_and_finished_frees_slot() -> None:
    s = make(max_num_seqs=2)
    s.add_request("a", [1], max_new_tokens=100)
    s.add_request("b", [2], max_new_tokens=100)
    s.add_request("c", [3], max_new_tokens=100)
    plan, _ = run_step(s)
    assert sorted(plan.admitted) == ["a", "b"] and s.num_waiting == 1
    slot_a = s.get("a").slot  # type: ignore[union-attr]
    assert s.finish("a")
    plan, _ = run_step(s)
    assert plan.released_slots == [slot_a]
    assert plan.admitted == ["c"] and s.get("c").slot == slot_a  # type: ignore[union-attr]


def test_abort_of_waiting_request_never_schedules_it() -> None:
    s = make(max_num_seqs=1)
    s.add_request("a", [1], max_new_tokens=5)
    s.add_request("b", [2], max_new_tokens=5)
    run_step(s)
    assert s.abort("b")
    assert s.num_waiting == 0
    plan, _ = run_step(s)
    assert [w.request_id for w in plan.work] == ["a"]
    assert not s.abort("b")


def test_finish_during_step_skips_its_update() -> None:
    s = make()
    s.add_request("a", [1, 2], max_new_tokens=5)
    plan = s.schedule()
    s.finish("a")  # client went away while the batch was decoding
    assert s.update_from_output(plan, {"a": 3}) == []


def test_kv_pressure_preempts_youngest_and_recomputes_it_later() -> None:
    s = make(max_num_seqs=4, max_batch_tokens=64, kv_capacity=12)
    s.add_request("old", [1, 2, 3, 4], max_new_tokens=8)
    s.add_request("young", [5, 6, 7, 8], max_new_tokens=8)
    plan, _ = run_step(s)
    assert sorted(plan.admitted) == ["old", "young"]
    preempted: list[str] = []
    for _ in range(4):
        plan, _ = run_step(s)
        preempted += plan.preempted
        assert s.kv_used <= 12
    assert preempted == ["young"]
    young = s.get("young")
    assert young is not None and young.num_computed == 0 and young.preemptions == 1
    # It keeps the token it generated and is recomputed (prompt + output) once there is room.
    assert young.tokens[:4] == [5, 6, 7, 8] and len(young.tokens) >= 5
    so_far = tuple(young.tokens)
    s.finish("old")
    plan, _ = run_step(s)
    assert plan.admitted == ["young"]
    # Every token so far is fed again from position 0, and the next one is sampled.
    (work,) = plan.work
    assert (work.start_pos, work.token_ids, work.sample) == (0, so_far, True)


def test_zero_max_tokens_scores_prompt_without_sampling() -> None:
    s = make()
    s.add_request("echo", [1, 2, 3], max_new_tokens=0, want_prompt_logits=True)
    plan = s.schedule()
    assert plan.work[0].all_logits and not plan.work[0].sample
    ups = s.update_from_output(plan, {})
    assert ups[0].new_token is None and ups[0].finished_by_length


def test_prompt_logits_only_on_first_prefill() -> None:
    s = make(max_batch_tokens=4, max_num_seqs=2)
    s.add_request("a", [1, 2, 3, 4, 5, 6], max_new_tokens=3, want_prompt_logits=True)
    p1, _ = run_step(s)
    p2, _ = run_step(s)
    p3, _ = run_step(s)
    assert p1.work[0].all_logits and p2.work[0].all_logits
    assert not p3.work[0].all_logits


def test_rejects_what_can_never_fit() -> None:
    s = make(kv_capacity=10)
    with pytest.raises(ValueError):
        s.add_request("a", list(range(8)), max_new_tokens=5)
    with pytest.raises(ValueError):
        s.add_request("b", [], max_new_tokens=1)
    s.add_request("c", [1], max_new_tokens=1)
    with pytest.raises(ValueError):
        s.add_request("c", [1], max_new_tokens=1)


def test_budget_is_never_exceeded_with_many_sequences() -> None:
    s = make(max_num_seqs=8, max_batch_tokens=10)
    for i in range(8):
        s.add_request(f"r{i}", [i + 1] * 5, max_new_tokens=4)
    for _ in range(12):
        plan, _ = run_step(s)
        assert plan.num_tokens <= 10
        assert len({w.slot for w in plan.work}) == len(plan.work)
