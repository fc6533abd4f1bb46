"""The scheduler with beam-search groups, driven step by step (no model, no I/O)."""

from __future__ import annotations

import pytest

from lmaas.worker.scheduler import Scheduler, SchedulerConfig, StepPlan


def make(max_num_seqs: int = 4, max_batch_tokens: int = 16, kv_capacity: int = 1000) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs, max_batch_tokens, kv_capacity))


def step(
    s: Scheduler, beams: dict[str, list[int]] | None = None, token: int = 7
) -> tuple[StepPlan, dict[str, bool]]:
    """One step: normal sequences sample ``token``; beam groups report ``beams`` live slots
    (default: keep the slots they have, or all their slots right after the prefill)."""
    plan = s.schedule()
    sampled = {w.request_id: token for w in plan.work if w.sample}
    live: dict[str, list[int]] = {}
    for w in plan.work:
        seq = s.get(w.request_id)
        if seq is not None and seq.is_beam and w.sample:
            live[w.request_id] = (beams or {}).get(w.request_id, list(w.beam_slots or seq.slots))
    updates = s.update_from_output(plan, sampled, live)
    return plan, {u.request_id: u.finished_by_length for u in updates}


def test_beam_group_waits_for_all_its_slots_and_blocks_the_queue_behind_it() -> None:
    s = make(max_num_seqs=4)
    s.add_request("a", [1, 2], max_new_tokens=50)
    s.add_request("b", [1, 2], max_new_tokens=50)
    step(s)
    s.add_request("beam", [5, 6, 7], max_new_tokens=4, beam_width=3)
    s.add_request("late", [9], max_new_tokens=4)
    plan, _ = step(s)
    # Two slots are free: not enough for the beam group, and "late" may not overtake it.
    assert plan.admitted == [] and s.num_waiting == 2 and s.num_free_slots == 2
    s.finish("a")
    plan, _ = step(s)
    assert plan.admitted == ["beam"] and s.num_waiting == 1
    seq = s.get("beam")
    assert seq is not None and len(seq.slots) == 3 and seq.slot == seq.slots[0]
    assert s.num_slots_used == 4 and s.num_running == 2
    # The prompt is prefilled once, in the group's first slot.
    work = next(w for w in plan.work if w.request_id == "beam")
    assert work.slot == seq.slots[0] and work.token_ids == (5, 6, 7) and work.sample


def test_beams_decode_together_and_count_their_kv_cells() -> None:
    s = make(max_num_seqs=4)
    s.add_request("beam", [1, 2, 3, 4, 5], max_new_tokens=4, beam_width=3)
    plan, _ = step(s)  # prefill; the search starts with 3 beams
    seq = s.get("beam")
    assert seq is not None
    assert seq.beam_slots == seq.slots and s.kv_used == 5
    plan, at_length = step(s)
    (work,) = plan.work
    assert work.beam_slots == tuple(seq.slots) and work.token_ids == ()
    assert work.start_pos == 5 and work.num_tokens == 3 and plan.num_tokens == 3
    # Prompt once, plus one cell per beam for the token each has fed.
    assert seq.num_computed == 6 and s.kv_used == 5 + 3 and not at_length["beam"]
    # One beam dies: only two are fed next, and the dead one's cells no longer count.
    plan, _ = step(s, beams={"beam": seq.slots[:2]})
    assert s.kv_used == 5 + 2 * 2
    plan, _ = step(s)
    assert plan.work[0].beam_slots == tuple(seq.slots[:2])
    _, at_length = step(s)
    assert at_length["beam"]  # 4 tokens per beam


def test_finishing_a_beam_group_releases_every_slot() -> None:
    s = make(max_num_seqs=4)
    s.add_request("beam", [1, 2], max_new_tokens=8, beam_width=4)
    step(s)
    step(s)
    seq = s.get("beam")
    assert seq is not None
    slots = list(seq.slots)
    assert s.num_free_slots == 0
    s.finish("beam")  # the search ended, or the client went away
    s.add_request("next", [3], max_new_tokens=2)
    plan = s.schedule()
    assert sorted(plan.released_slots) == sorted(slots)
    assert plan.admitted == ["next"] and s.num_slots_used == 1


def test_a_search_that_ends_reports_no_live_beams() -> None:
    s = make()
    s.add_request("beam", [1, 2], max_new_tokens=8, beam_width=2)
    step(s, beams={"beam": []})
    seq = s.get("beam")
    assert seq is not None and seq.beam_slots == []
    plan = s.schedule()
    assert plan.work == []  # nothing to feed until the loop finishes it


def test_beams_advance_together_or_wait_for_budget() -> None:
    s = make(max_num_seqs=4, max_batch_tokens=4)
    s.add_request("beam", [1, 2], max_new_tokens=8, beam_width=3)
    step(s)
    s.add_request("long", list(range(10, 30)), max_new_tokens=2)
    plan, _ = step(s)
    by_id = {w.request_id: w for w in plan.work}
    # The beams (3 tokens) go first; the prompt gets what is left of the 4-token budget.
    assert by_id["beam"].num_tokens == 3 and len(by_id["long"].token_ids) == 1
    assert plan.num_tokens <= 4


def test_kv_pressure_preempts_a_beam_group_which_starts_over() -> None:
    s = make(max_num_seqs=4, max_batch_tokens=64, kv_capacity=24)
    s.add_request("old", [1, 2, 3, 4], max_new_tokens=10)
    s.add_request("beam", [5, 6, 7, 8], max_new_tokens=6, beam_width=3)
    plan, _ = step(s)
    assert plan.admitted == ["old", "beam"]
    preempted: list[str] = []
    for _ in range(8):
        plan, _ = step(s)
        preempted += plan.preempted
        assert s.kv_used <= 24
        if preempted:
            break
    assert preempted == ["beam"]
    seq = s.get("beam")
    assert seq is not None and seq.beam_slots == [] and seq.num_computed == 0
    assert sorted(plan.released_slots) == [1, 2, 3] and seq.tokens == [5, 6, 7, 8]
    assert s.num_waiting == 1  # not readmitted in the step that pushed it out
    s.finish("old")
    plan, _ = step(s)
    assert plan.admitted == ["beam"] and plan.work[0].token_ids == (5, 6, 7, 8)


def test_beam_requests_that_can_never_run_are_refused() -> None:
    s = make(max_num_seqs=4, kv_capacity=100)
    with pytest.raises(ValueError, match="slots"):
        s.add_request("wide", [1], max_new_tokens=4, beam_width=5)
    with pytest.raises(ValueError, match="KV"):
        s.add_request("long", [1] * 20, max_new_tokens=30, beam_width=3)  # 20 + 3 * 30 > 100
    s.add_request("fits", [1] * 10, max_new_tokens=30, beam_width=3)


def test_live_slots_must_belong_to_the_group() -> None:
    s = make()
    s.add_request("beam", [1, 2], max_new_tokens=8, beam_width=2)
    plan = s.schedule()
    with pytest.raises(ValueError):
        s.update_from_output(plan, {}, {"beam": [0, 3]})
