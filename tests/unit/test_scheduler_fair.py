"""Fair sharing in the scheduler: priority classes, then weighted fairness across tenants.

Driven step by step like the worker loop: schedule, 'decode', sample, commit, finish at length.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lmaas.worker.scheduler import Scheduler, SchedulerConfig


def make(max_num_seqs: int = 4, aging_steps: int = 2000) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs, 64, 100_000, aging_steps=aging_steps))


def step(s: Scheduler) -> list[str]:
    """One engine step; returns the requests admitted in it."""
    plan = s.schedule()
    sampled = {w.request_id: 7 for w in plan.work if w.sample}
    for update in s.update_from_output(plan, sampled):
        if update.finished_by_length:
            s.finish(update.request_id)
    return plan.admitted


def run(s: Scheduler, steps: int, before: Callable[[int], None] | None = None) -> list[str]:
    admitted: list[str] = []
    for i in range(steps):
        if before is not None:
            before(i)
        admitted += step(s)
    return admitted


def tenant_of(rid: str) -> str:
    return rid.split("-")[0]


def test_a_late_tenant_preempts_the_flood_at_the_next_step() -> None:
    s = make(max_num_seqs=4)
    for i in range(64):
        s.add_request(f"A-{i}", [1, 2], max_new_tokens=3, tenant="A")
    assert step(s) == ["A-0", "A-1", "A-2", "A-3"]
    step(s)  # A's four generate a token each
    a3_tokens = list(s.get("A-3").tokens)  # type: ignore[union-attr]
    s.add_request("B-0", [3, 4], max_new_tokens=3, tenant="B")
    plan = s.schedule()
    # B did not wait for a slot to free: A's most recently admitted request made room.
    assert plan.admitted == ["B-0"]
    assert plan.preempted == ["A-3"]
    a3 = s.get("A-3")
    assert a3 is not None and a3.tokens == a3_tokens and a3.num_computed == 0
    s.update_from_output(plan, {w.request_id: 7 for w in plan.work if w.sample})
    # A's preempted request goes back first among A's, ahead of A's 60 waiting ones.
    order: list[str] = []
    while "A-3" not in order:
        order += step(s)
    assert order[0] == "A-3"


def test_no_preemption_for_a_tenant_that_holds_its_share() -> None:
    s = make(max_num_seqs=4)
    for i in range(2):
        s.add_request(f"A-{i}", [1, 2], max_new_tokens=50, tenant="A")
        s.add_request(f"B-{i}", [1, 2], max_new_tokens=50, tenant="B")
    assert sorted(step(s)) == ["A-0", "A-1", "B-0", "B-1"]
    s.add_request("B-2", [1, 2], max_new_tokens=50, tenant="B")
    for _ in range(5):
        plan = s.schedule()
        s.update_from_output(plan, {w.request_id: 7 for w in plan.work if w.sample})
        # Two tenants, four slots: B has its two; A is not pushed out for B's third.
        assert plan.preempted == [] and plan.admitted == []


def test_a_higher_class_preempts_a_lower_one_first() -> None:
    s = make(max_num_seqs=2)
    s.add_request("A-0", [1, 2], max_new_tokens=50, tenant="A", rank=0)
    s.add_request("A-1", [1, 2], max_new_tokens=50, tenant="A", rank=2)
    step(s)
    s.add_request("B-0", [1, 2], max_new_tokens=50, tenant="A", rank=0)
    plan = s.schedule()
    # Same tenant, so no fair-share claim; but a background request gives way to interactive.
    assert plan.preempted == ["A-1"] and plan.admitted == ["B-0"]


def test_a_beam_search_is_never_the_victim() -> None:
    s = make(max_num_seqs=2)
    s.add_request("A-0", [1, 2], max_new_tokens=5, tenant="A", beam_width=2)
    step(s)
    s.add_request("B-0", [1, 2], max_new_tokens=5, tenant="B")
    plan = s.schedule()
    assert plan.preempted == [] and plan.admitted == []


def test_running_cap_bounds_admission_and_preemption() -> None:
    s = make(max_num_seqs=4)
    s.running_cap = 2
    for i in range(4):
        s.add_request(f"A-{i}", [1, 2], max_new_tokens=50, tenant="A")
    assert step(s) == ["A-0", "A-1"]
    s.add_request("B-0", [1, 2], max_new_tokens=50, tenant="B")
    plan = s.schedule()
    # Under the cap of 2 the shares are 1 and 1: B takes A's younger slot, still 2 running.
    assert plan.preempted == ["A-1"] and plan.admitted == ["B-0"]
    assert s.num_slots_used == 2


def test_a_request_preempted_for_fairness_is_not_charged_twice() -> None:
    s = make(max_num_seqs=2)
    for i in range(3):
        s.add_request(f"A-{i}", [1, 2], max_new_tokens=50, tenant="A")
    step(s)
    charged = s._waiting.virtual_time("A")
    s.add_request("B-0", [1, 2], max_new_tokens=1, tenant="B")
    order: list[str] = []
    while "A-1" not in order:
        order += step(s)
    assert order[:2] == ["B-0", "A-1"]
    assert s._waiting.virtual_time("A") == charged


def test_first_come_first_served_within_a_tenant_and_alternating_between_two() -> None:
    s = make(max_num_seqs=1)
    for i in range(4):
        s.add_request(f"A-{i}", [1], max_new_tokens=1, tenant="A")
        s.add_request(f"B-{i}", [1], max_new_tokens=1, tenant="B")
    order = run(s, 8)
    assert order == ["A-0", "B-0", "A-1", "B-1", "A-2", "B-2", "A-3", "B-3"]


def admitted_tokens(s: Scheduler, order: list[str], costs: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rid in order:
        out[tenant_of(rid)] = out.get(tenant_of(rid), 0) + costs[rid]
    return out


def test_weights_two_to_one_admit_about_twice_the_tokens() -> None:
    s = make(max_num_seqs=4)
    costs: dict[str, int] = {}
    for i in range(400):
        for tenant, weight in (("A", 2.0), ("B", 1.0)):
            rid = f"{tenant}-{i}"
            s.add_request(rid, [1, 2, 3], max_new_tokens=2, tenant=tenant, weight=weight)
            costs[rid] = 5
    order = run(s, 300)
    tokens = admitted_tokens(s, order, costs)
    assert len(order) > 150
    assert 1.8 <= tokens["A"] / tokens["B"] <= 2.2


def test_fairness_counts_tokens_not_requests() -> None:
    # A's requests cost 10 times B's: with equal weights both get about the same tokens,
    # so B gets about ten times the requests.
    s = make(max_num_seqs=4)
    costs: dict[str, int] = {}
    for i in range(1000):
        s.add_request(f"A-{i}", [1] * 10, max_new_tokens=10, tenant="A")
        s.add_request(f"B-{i}", [1], max_new_tokens=1, tenant="B")
        costs[f"A-{i}"], costs[f"B-{i}"] = 20, 2
    order = run(s, 200)
    assert s.num_waiting > 1000  # both were backlogged throughout
    tokens = admitted_tokens(s, order, costs)
    assert 0.8 <= tokens["A"] / tokens["B"] <= 1.25
    assert sum(tenant_of(r) == "B" for r in order) > 5 * sum(tenant_of(r) == "A" for r in order)


def test_idle_time_is_not_banked_as_credit() -> None:
    s = make(max_num_seqs=1)
    for i in range(30):
        s.add_request(f"B-{i}", [1], max_new_tokens=1, tenant="B")
    run(s, 30)  # B alone: served 30 requests while A was idle
    for i in range(10):
        s.add_request(f"A-{i}", [1], max_new_tokens=1, tenant="A")
        s.add_request(f"B-{30 + i}", [1], max_new_tokens=1, tenant="B")
    order = run(s, 10)
    # A does not get the next 10 slots for B's past service: they alternate.
    assert 4 <= sum(tenant_of(r) == "A" for r in order) <= 6


def test_a_higher_class_is_admitted_first_then_fairness_within_it() -> None:
    s = make(max_num_seqs=1)
    s.add_request("C-bg", [1], max_new_tokens=1, tenant="C", rank=2)
    s.add_request("B-batch", [1], max_new_tokens=1, tenant="B", rank=1)
    s.add_request("A-0", [1], max_new_tokens=1, tenant="A", rank=0)
    s.add_request("A-1", [1], max_new_tokens=1, tenant="A", rank=0)
    s.add_request("B-0", [1], max_new_tokens=1, tenant="B", rank=0)
    order = run(s, 5)
    assert order == ["A-0", "B-0", "A-1", "B-batch", "C-bg"]


def test_a_lower_class_ages_and_is_not_starved_forever() -> None:
    s = make(max_num_seqs=1, aging_steps=10)
    counter = iter(range(10_000))

    def keep_flooding(_: int) -> None:
        s.add_request(f"A-{next(counter)}", [1], max_new_tokens=1, tenant="A", rank=0)

    keep_flooding(0)
    s.add_request("B-bg", [1], max_new_tokens=1, tenant="B", rank=2)
    order = run(s, 40, before=keep_flooding)
    # Background rises a class every 10 steps: interactive-level after 20, then fairness.
    assert "B-bg" in order
    assert 18 <= order.index("B-bg") <= 24
    # Without aging (a step count it never reaches) interactive traffic keeps it waiting.
    s = make(max_num_seqs=1, aging_steps=10**9)
    keep_flooding(0)
    s.add_request("B-bg", [1], max_new_tokens=1, tenant="B", rank=2)
    assert "B-bg" not in run(s, 40, before=keep_flooding)


def test_the_request_chosen_next_waits_for_room_rather_than_be_overtaken() -> None:
    s = make(max_num_seqs=4)
    s.add_request("A-0", [1], max_new_tokens=50, tenant="A")
    s.add_request("A-1", [1], max_new_tokens=50, tenant="A")
    step(s)
    s.add_request("B-beam", [1, 2], max_new_tokens=4, tenant="B", beam_width=4)
    s.add_request("C-0", [1], max_new_tokens=4, tenant="C")
    # B's beam search is next (least served) and needs 4 free slots: C does not overtake it.
    assert step(s) == []
    s.finish("A-0")
    s.finish("A-1")
    assert step(s) == ["B-beam"]


def test_a_preempted_request_still_goes_back_first() -> None:
    s = make(max_num_seqs=2)
    s.add_request("A-0", [1], max_new_tokens=50, tenant="A")
    s.add_request("A-1", [1], max_new_tokens=50, tenant="A")
    step(s)
    s.add_request("B-0", [1], max_new_tokens=5, tenant="B")
    assert s.preempt_youngest() == "A-1"
    assert s.get("A-1") is not None and s.num_waiting == 2
    assert step(s) == ["A-1"]


def test_abort_of_a_waiting_request_keeps_the_queue_consistent() -> None:
    s = make(max_num_seqs=1)
    s.add_request("A-0", [1], max_new_tokens=1, tenant="A")
    s.add_request("A-1", [1], max_new_tokens=1, tenant="A")
    s.add_request("B-0", [1], max_new_tokens=1, tenant=None)
    assert s.finish("A-1")
    assert s.num_waiting == 2
    assert run(s, 3) == ["A-0", "B-0"]
    assert not s.has_work()


@pytest.mark.parametrize(("weight", "rank"), [(0.0, 0), (-1.0, 0), (1.0, -1)])
def test_bad_weight_or_rank_is_refused(weight: float, rank: int) -> None:
    with pytest.raises(ValueError, match="weight"):
        make().add_request("a", [1], max_new_tokens=1, weight=weight, rank=rank)


def _started(s: Scheduler, n: int, rank: int) -> list[str]:
    """``n`` requests of class ``rank`` admitted and decoding (each has its first token)."""
    rids = [f"batch-{i}" for i in range(n)]
    for rid in rids:
        s.add_request(rid, [1, 2, 3], max_new_tokens=100, tenant="B", rank=rank)
    step(s)
    return rids


def test_a_higher_class_prefills_alone_and_the_lower_one_decodes_after() -> None:
    s = make(max_num_seqs=4)
    batch = _started(s, 3, rank=1)
    s.add_request("user", [4, 5, 6, 7, 8], max_new_tokens=2, tenant="A", rank=0)
    plan = s.schedule()
    # The user's prompt alone: its first token does not wait on the batch's three decodes.
    assert [w.request_id for w in plan.work] == ["user"]
    s.update_from_output(plan, {"user": 9})
    plan = s.schedule()  # the user decodes now, and the batch with it
    assert sorted(w.request_id for w in plan.work) == sorted([*batch, "user"])


def test_a_prompt_found_whole_in_the_cache_counts_as_a_prefill() -> None:
    s = make(max_num_seqs=4)
    _started(s, 2, rank=1)
    s.add_request("user", [4, 5], max_new_tokens=2, tenant="A", rank=0)
    user = s.get("user")
    assert user is not None
    user.num_computed = 1  # as a prefix-cache copy leaves it: one prompt token to compute
    plan = s.schedule()
    assert [w.request_id for w in plan.work] == ["user"]


def test_the_same_class_and_a_switch_off_keep_everyone_in_the_step() -> None:
    s = make(max_num_seqs=4)
    _started(s, 2, rank=0)
    s.add_request("user", [4, 5, 6], max_new_tokens=2, tenant="A", rank=0)
    assert len(s.schedule().work) == 3  # no class above another: nobody sits out
    off = Scheduler(SchedulerConfig(4, 64, 100_000, hold_lower_classes=False))
    _started(off, 2, rank=1)
    off.add_request("user", [4, 5, 6], max_new_tokens=2, tenant="A", rank=0)
    assert len(off.schedule().work) == 3


def test_a_lower_class_sits_out_a_bounded_number_of_steps_in_a_row() -> None:
    s = make(max_num_seqs=2)
    s.config = SchedulerConfig(2, 2, 100_000, max_held_steps=3)  # 2-token prefill chunks
    _started(s, 1, rank=1)
    s.add_request("user", list(range(10, 30)), max_new_tokens=1, tenant="A", rank=0)
    ran = []
    for _ in range(8):  # the user's 20-token prompt takes 10 steps of 2 tokens
        plan = s.schedule()
        ran.append("batch-0" in {w.request_id for w in plan.work})
        s.update_from_output(plan, {w.request_id: 7 for w in plan.work if w.sample})
    assert ran == [False, False, False, True, False, False, False, True]


def test_a_batch_prompt_does_not_take_the_step_budget_from_a_waiting_user() -> None:
    s = make(max_num_seqs=4)  # 64 tokens a step
    s.add_request("batch-0", list(range(100, 400)), max_new_tokens=5, tenant="B", rank=1)
    assert step(s) == ["batch-0"]  # its 300-token prompt: 64 tokens a step
    s.add_request("user", list(range(10, 50)), max_new_tokens=2, tenant="A", rank=0)
    plan = s.schedule()
    # The user's whole 40-token prompt in this step; the batch's prompt sits it out.
    assert [(w.request_id, len(w.token_ids)) for w in plan.work] == [("user", 40)]


def test_a_running_users_prompt_is_fed_before_an_older_batch_prompt() -> None:
    s = make(max_num_seqs=4)
    s.add_request("batch-0", list(range(100, 400)), max_new_tokens=5, tenant="B", rank=1)
    step(s)
    s.add_request("user", list(range(10, 150)), max_new_tokens=2, tenant="A", rank=0)
    chunks = []
    for _ in range(3):  # the user's 140 tokens: 64, 64, then 12 and the batch's prompt again
        plan = s.schedule()
        chunks.append([(w.request_id, len(w.token_ids)) for w in plan.work])
        s.update_from_output(plan, {w.request_id: 7 for w in plan.work if w.sample})
    assert chunks[:2] == [[("user", 64)], [("user", 64)]]
    assert chunks[2] == [("user", 12), ("batch-0", 52)] or chunks[2] == [("user", 12)]
