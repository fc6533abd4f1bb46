"""The prefix cache: its index, and the scheduler driving a fake KV cache that checks, at every
token it places, that the sequence sees exactly its own tokens at positions 0..pos-1.

The fake KV keeps cells as llama.cpp's unified cache does: each cell has a position, a token
and a set of sequence ids; copying a prefix adds an id to cells, clearing an id removes it,
and a cell with no id left is free.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pytest

from lmaas.worker.scheduler import Scheduler, SchedulerConfig
from lmaas.worker.scheduler.prefix import PrefixIndex, common_prefix


def arr(tokens: list[int]) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int32)


# --- the index ------------------------------------------------------------------------------


def test_common_prefix() -> None:
    assert common_prefix(arr([1, 2, 3]), arr([1, 2, 4])) == 2
    assert common_prefix(arr([1, 2]), arr([1, 2, 3])) == 2
    assert common_prefix(arr([]), arr([1])) == 0
    assert common_prefix(arr([5]), arr([1])) == 0


def test_match_takes_the_longest_prefix_within_the_limit() -> None:
    index = PrefixIndex(range(10, 14))
    short = index.insert(arr([1, 2, 3]))
    long = index.insert(arr([1, 2, 9, 9, 9]))
    assert short is not None and long is not None and short != long
    m = index.match(arr([1, 2, 9, 9, 9, 7]), limit=5)
    assert m is not None and (m.seq_id, m.length) == (long, 5)
    m = index.match(arr([1, 2, 9, 9, 9]), limit=4)  # the whole prompt: one token left to do
    assert m is not None and m.length == 4
    m = index.match(arr([1, 2, 3, 4]), limit=3)
    assert m is not None and (m.seq_id, m.length) == (short, 3)
    assert index.match(arr([7, 1, 2]), limit=2) is None


def test_running_sources_compete_with_entries() -> None:
    index = PrefixIndex(range(4, 6))
    index.insert(arr([1, 2]))
    m = index.match(arr([1, 2, 3, 4, 5]), limit=4, running=[(0, arr([1, 2, 3]))])
    assert m is not None and (m.seq_id, m.length) == (0, 3)


def test_an_entry_that_is_a_prefix_of_a_new_one_is_dropped_and_a_covered_one_not_stored() -> None:
    index = PrefixIndex(range(8, 12))
    first = index.insert(arr([1, 2, 3]))
    second = index.insert(arr([1, 2, 3, 4, 5]))  # the next turn of the same conversation
    assert first is not None and second is not None
    assert [e.seq_id for e in index.entries()] == [second]
    assert index.take_dropped() == [first]
    assert index.insert(arr([1, 2, 3, 4])) is None  # covered: nothing to copy
    assert len(index) == 1 and index.cells == 5


def test_lru_eviction_and_ids_reused_only_after_their_cells_are_cleared() -> None:
    index = PrefixIndex(range(20, 22))
    a = index.insert(arr([1]))
    b = index.insert(arr([2]))
    assert index.match(arr([1, 5]), limit=1) is not None  # touches a: b is now the oldest
    assert index.insert(arr([3])) is None  # b's id is dropped but not clear yet
    assert index.take_dropped() == [b]
    c = index.insert(arr([3]))
    assert c == b
    assert index.evict_lru() == 1
    assert index.take_dropped() == [a]
    assert index.evict_lru(exclude=c) is None


def test_keep_protects_the_source_of_a_planned_copy() -> None:
    index = PrefixIndex(range(5, 6))
    only = index.insert(arr([4, 4, 4]))
    assert index.insert(arr([9]), keep=only) is None
    assert [e.seq_id for e in index.entries()] == [only]


# --- the scheduler over a fake KV -----------------------------------------------------------


@dataclass
class Cell:
    pos: int
    token: int
    seqs: set[int] = field(default_factory=set)


class FakeKV:
    """llama.cpp's unified KV cache, as far as the scheduler's plans touch it."""

    def __init__(self) -> None:
        self.cells: list[Cell] = []

    def seen(self, seq: int) -> list[tuple[int, int]]:
        return sorted((c.pos, c.token) for c in self.cells if seq in c.seqs)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        self.clear(dst)
        for c in self.cells:
            if src in c.seqs and c.pos < n:
                c.seqs.add(dst)

    def clear(self, seq: int) -> None:
        for c in self.cells:
            c.seqs.discard(seq)
        self.cells = [c for c in self.cells if c.seqs]

    def place(self, seq: int, pos: int, token: int, expected: list[int]) -> None:
        assert self.seen(seq) == list(enumerate(expected[:pos])), f"seq {seq} at {pos}"
        self.cells.append(Cell(pos, token, {seq}))


def next_token(history: list[int]) -> int:
    """A deterministic 'model': the next token depends on every token before it."""
    return (sum((i + 1) * t for i, t in enumerate(history)) * 2654435761) % 1000


class Driver:
    """The worker loop's part: apply the plan to the KV, feed tokens, sample, finish."""

    def __init__(self, *, prefix_ids: int = 8, kv: int = 4096, seqs: int = 4, **kw: int) -> None:
        self.s = Scheduler(
            SchedulerConfig(
                max_num_seqs=seqs,
                max_batch_tokens=64,
                kv_capacity=kv,
                prefix_ids=prefix_ids,
                **kw,
            )
        )
        self.kv = FakeKV()
        self.out: dict[str, list[int]] = {}
        self.cached: dict[str, int] = {}
        self.fed = 0  # tokens decoded, prompt and generated
        self.fed_by: dict[str, int] = {}
        self.preempted: list[str] = []

    def add(self, rid: str, prompt: list[int], max_new: int = 4, **kw: object) -> None:
        self.s.add_request(rid, prompt, max_new, **kw)  # type: ignore[arg-type]
        self.out[rid] = []

    def step(self) -> None:
        plan = self.s.schedule()
        for src, dst, n in plan.saves:
            self.kv.copy_prefix(src, dst, n)
        for slot in plan.released_slots:
            self.kv.clear(slot)
        for src, dst, n in plan.copies:
            self.kv.copy_prefix(src, dst, n)
        for seq_id in plan.dropped:
            self.kv.clear(seq_id)
        # The scheduler knows the cells in use exactly, shared ones counted once.
        assert len(self.kv.cells) == self.s.kv_used <= self.s.config.kv_capacity
        self.preempted += plan.preempted
        for rid in plan.admitted:
            seq = self.s.get(rid)
            assert seq is not None
            self.cached.setdefault(rid, seq.cached_tokens)
        sampled = {}
        for work in plan.work:
            seq = self.s.get(work.request_id)
            assert seq is not None
            for j, token in enumerate(work.token_ids):
                self.kv.place(work.slot, work.start_pos + j, token, seq.tokens)
            self.fed += len(work.token_ids)
            self.fed_by[work.request_id] = self.fed_by.get(work.request_id, 0) + len(work.token_ids)
            if work.sample:
                sampled[work.request_id] = next_token(list(seq.tokens))
        for u in self.s.update_from_output(plan, sampled):
            if u.new_token is not None:
                self.out[u.request_id].append(u.new_token)
            if u.finished_by_length:
                self.s.finish(u.request_id)

    def run(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.s.has_work():
                self.step()  # the last finished slots are cleared at the next step
                return
            self.step()
        raise AssertionError("did not finish")


def prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 1000) for _ in range(n)]


def test_the_same_prompt_twice_reuses_all_but_its_last_token_with_the_same_output() -> None:
    d = Driver()
    p = prompt(1, 50)
    d.add("a", p)
    d.run()
    fed = d.fed
    d.add("b", p)
    d.run()
    assert d.out["a"] == d.out["b"]
    assert d.cached == {"a": 0, "b": 49}
    assert d.fed - fed == 1 + 3  # one prompt token, then 3 decodes (the 4th is sampled only)


@pytest.mark.parametrize("shared", [1, 7, 16, 33, 49])
def test_outputs_with_the_cache_equal_those_without(shared: int) -> None:
    base = prompt(2, 50)
    others = [base[:shared] + prompt(10 + i, 12) for i in range(3)]
    cold = Driver(prefix_ids=0)
    warm = Driver()
    for d in (cold, warm):
        d.add("base", base)
        d.run()
        for i, p in enumerate(others):
            d.add(f"o{i}", p, max_new=6)
            d.run()
    assert cold.out == warm.out
    assert all(warm.cached[f"o{i}"] == shared for i in range(3))
    assert warm.fed < cold.fed


def test_a_burst_sharing_a_prefix_prefills_it_once() -> None:
    system = prompt(3, 200)
    d = Driver(seqs=8)
    for i in range(6):
        d.add(f"q{i}", system + prompt(100 + i, 5))
    d.run()
    first = min(d.cached, key=lambda r: d.cached[r])
    assert d.cached[first] == 0
    # Each waited for it until what was left to compute was under prefix_wait_min tokens.
    assert all(200 - 16 < n <= 200 for n in sorted(d.cached.values())[1:]), d.cached
    # The system prompt once (and at most prefix_wait_min of it again per request), each
    # question, each decode: without the cache it would be 6 * (205 + 3) tokens.
    assert d.fed < 200 + 6 * (16 + 5 + 3)


def test_sequences_sharing_cells_fit_where_separate_copies_would_not() -> None:
    system = prompt(13, 200)
    d = Driver(seqs=8, kv=600)  # 8 separate copies of the prompt would need 8 * 209 cells
    for i in range(8):
        d.add(f"q{i}", system + prompt(200 + i, 5), max_new=4)
    most = 0
    while d.s.has_work():
        d.step()
        most = max(most, d.s.num_running)
    assert most == 8 and d.preempted == []
    assert all(len(d.out[f"q{i}"]) == 4 for i in range(8))


def test_a_conversation_benefits_turn_after_turn() -> None:
    d = Driver()
    history = prompt(4, 30)
    previous = 0
    for turn in range(5):
        rid = f"t{turn}"
        d.add(rid, history, max_new=5)
        d.run()
        if turn:
            assert d.cached[rid] >= previous
        previous = len(history) + len(d.out[rid]) - 1  # answer cells cached (last not fed)
        history = history + d.out[rid] + prompt(50 + turn, 6)
    assert len(d.s.prefix or ()) == 1  # each turn replaced the one before


def test_opting_out_neither_reads_nor_leaves_cells() -> None:
    d = Driver()
    p = prompt(5, 40)
    d.add("a", p)
    d.run()
    d.add("private", p, use_cache=False)
    d.run()
    assert d.cached["private"] == 0
    d.add("c", prompt(6, 40), use_cache=False)
    d.run()
    assert d.s.prefix is not None and len(d.s.prefix) == 1


def test_prompt_logits_are_never_skipped() -> None:
    d = Driver()
    p = prompt(7, 30)
    d.add("a", p)
    d.run()
    d.add("echo", p, want_prompt_logits=True)
    d.run()
    assert d.cached["echo"] == 0


def test_cached_cells_are_evicted_before_a_running_sequence_is_preempted() -> None:
    d = Driver(kv=120, seqs=2)
    d.add("old", prompt(8, 60), max_new=2)
    d.run()
    assert d.s.prefix is not None and d.s.prefix.cells > 0
    d.add("x", prompt(9, 50), max_new=10)
    d.add("y", prompt(10, 50), max_new=10)
    d.run()
    assert d.s.get("x") is None and d.s.get("y") is None
    assert len(d.out["x"]) == len(d.out["y"]) == 10
    assert d.preempted == []  # both fit once the cached prefix was evicted


def test_a_fair_share_preemption_keeps_the_victims_cells() -> None:
    d = Driver(seqs=2)
    for i in range(2):
        d.add(f"a{i}", prompt(20 + i, 40), max_new=100, tenant="A")
    for _ in range(20):
        d.step()
    d.add("b", prompt(30, 5), max_new=2, tenant="B")
    d.run()
    assert len(d.preempted) == 1
    victim = d.preempted[0]
    assert len(d.out[victim]) == 100 and len(d.out["b"]) == 2
    # Prompt and 99 generated tokens are each fed once: its readmission copied its cells back
    # (a recompute without the cache would feed everything it had again).
    assert d.fed_by[victim] == 40 + 99


def test_a_decode_failure_drops_the_cache_before_shedding_a_sequence() -> None:
    d = Driver()
    d.add("a", prompt(11, 20))
    d.run()
    d.add("b", prompt(12, 20))
    d.step()
    assert d.s.on_decode_failure() is None
    assert d.s.prefix is not None and len(d.s.prefix) == 0
    assert d.s.on_decode_failure() == "b"


def test_a_cap_on_cached_cells() -> None:
    d = Driver(prefix_max_cells=50)
    for i in range(4):
        d.add(f"r{i}", prompt(40 + i, 30))
        d.run()
    assert d.s.prefix is not None and d.s.prefix.cells <= 50


@pytest.mark.parametrize("seed", range(6))
def test_random_traffic_never_shows_a_sequence_cells_not_its_own(seed: int) -> None:
    rng = random.Random(seed)
    stems = [prompt(seed * 100 + i, rng.randrange(5, 60)) for i in range(4)]
    d = Driver(kv=400, seqs=4, prefix_ids=5)
    cold = Driver(kv=400, seqs=4, prefix_ids=0)
    for i in range(40):
        p = rng.choice(stems)[: rng.randrange(1, 60)] + prompt(seed * 1000 + i, rng.randrange(1, 8))
        kw = {"use_cache": rng.random() > 0.1, "tenant": rng.choice("ABC")}
        max_new = rng.randrange(1, 12)
        d.add(f"r{i}", p, max_new=max_new, **kw)
        cold.add(f"r{i}", p, max_new=max_new)
        for _ in range(rng.randrange(0, 6)):
            if d.s.has_work():
                d.step()
        if rng.random() < 0.1 and d.s.get(f"r{i}") is not None:
            d.s.finish(f"r{i}")
            d.out.pop(f"r{i}")
            cold.s.finish(f"r{i}")
            cold.out.pop(f"r{i}")
    d.run()
    cold.run()
    assert d.out == cold.out  # every output is the one the prompt alone determines
    for seq_id in range(4):
        assert d.kv.seen(seq_id) == []  # slots hold nothing once every request ended
