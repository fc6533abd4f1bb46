"""Beam search bookkeeping with fake logits: ranking, length penalty, stopping, slot plans."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from lmaas.protocol.engine import FinishReason, TokenLogprob
from lmaas.worker.beam import (
    BeamSearch,
    BeamSettings,
    beam_score,
    log_softmax,
    plan_slots,
    top_candidates,
)

EOG = 0


class Letters:
    """Token 0 ends generation; token t >= 1 is the letter 'a' + t - 1."""

    def piece(self, token: int) -> bytes:
        return b"" if token == EOG else bytes([ord("a") + token - 1])

    def is_eog(self, token: int) -> bool:
        return token == EOG


def logits(*probs: float) -> npt.NDArray[np.float64]:
    return np.log(np.array(probs, dtype=np.float64))


def settings(**kw: object) -> BeamSettings:
    base: dict[str, object] = {"width": 2, "n": 2, "max_new_tokens": 16}
    return BeamSettings(**{**base, **kw})  # type: ignore[arg-type]


def test_score_divides_by_length_to_the_penalty() -> None:
    assert beam_score(-4.0, 4, 1.0) == pytest.approx(-1.0)
    assert beam_score(-4.0, 4, 0.0) == pytest.approx(-4.0)
    assert beam_score(-4.0, 4, 0.5) == pytest.approx(-2.0)
    assert beam_score(-3.0, 0, 1.0) == pytest.approx(-3.0)  # an empty beam counts as 1 token


def test_log_softmax_applies_the_bias_first() -> None:
    row = log_softmax(np.array([1.0, 2.0, 3.0], dtype=np.float32), {2: -100.0})
    assert np.exp(row).sum() == pytest.approx(1.0)
    assert row[2] < -90 and row[1] > row[0]


def test_top_candidates_rank_all_beams_by_cumulative_logprob() -> None:
    rows = [logits(0.1, 0.6, 0.3), logits(0.5, 0.25, 0.25)]
    cands = top_candidates(rows, [math.log(0.5), math.log(0.4)], per_beam=2)
    got = [(c.beam, c.token) for c in cands]
    # 0.5*0.6=.30, 0.4*0.5=.20, 0.5*0.3=.15, then beam 1's tie 0.4*0.25 -> lower token first
    assert got == [(0, 1), (1, 0), (0, 2), (1, 1)]
    assert cands[0].cumulative == pytest.approx(math.log(0.3))
    assert cands[0].logprob == pytest.approx(math.log(0.6))


def test_plan_keeps_first_child_in_place_and_copies_the_others() -> None:
    # Before the first step the prompt is in slot 5 only.
    plan = plan_slots([5, 5, 5], live=[5], reserved=[5, 6, 7])
    assert plan.slots == [5, 6, 7] and plan.copies == [(5, 6), (5, 7)] and plan.cleared == []
    # Beam in slot 6 died, slot 5 has two children: one copy into the dead beam's slot.
    plan = plan_slots([5, 7, 5], live=[5, 6, 7], reserved=[5, 6, 7])
    assert plan.slots == [5, 7, 6] and plan.copies == [(5, 6)] and plan.cleared == []
    # Only one beam survives: the others are cleared.
    plan = plan_slots([6], live=[5, 6, 7], reserved=[5, 6, 7])
    assert plan.slots == [6] and plan.copies == [] and plan.cleared == [5, 7]
    # A copy never overwrites a slot that is itself a source.
    plan = plan_slots([7, 7, 6, 7], live=[4, 5, 6, 7], reserved=[4, 5, 6, 7])
    assert plan.slots == [7, 4, 6, 5]
    sources = {src for src, _ in plan.copies}
    assert not sources & {dst for _, dst in plan.copies}


def three_steps(**kw: object) -> BeamSearch:
    """A width-2 search driven by hand-made distributions (vocabulary: EOG, a, b, c, d)."""
    search = BeamSearch(settings(**kw), [0, 1], Letters())
    # Step 1: a .5, b .3, EOG .1 -> EOG ranks third (>= width): dropped. Beams: a, b.
    plan = search.step([logits(0.1, 0.5, 0.3, 0.05, 0.05)])
    assert [b.token_ids() for b in search.running] == [[1], [2]]
    assert plan.slots == [0, 1] and plan.copies == [(0, 1)]
    assert search.finished == [] and not search.done
    # Step 2: a+EOG (.30) finishes "a"; then b+c (.24) and a+a (.10) run.
    plan = search.step([logits(0.6, 0.2, 0.1, 0.05, 0.05), logits(0.05, 0.05, 0.05, 0.8, 0.05)])
    assert [b.token_ids() for b in search.running] == [[2, 3], [1, 1]]
    assert plan.slots == [1, 0] and plan.copies == [] and plan.cleared == []
    assert not search.done
    # Step 3: b,c+EOG (.216) finishes "bc"; a,a,a (.085) and b,c,a (.006) run.
    search.step([logits(0.9, 0.025, 0.025, 0.025, 0.025), logits(0.1, 0.85, 0.03, 0.01, 0.01)])
    assert [b.token_ids() for b in search.running] == [[1, 1, 1], [2, 3, 1]]
    return search


def test_search_step_by_step_with_early_stopping() -> None:
    search = three_steps(early_stopping=True)
    assert search.done  # two hypotheses have finished
    results = search.results()
    assert [r.text for r in results] == ["bc", "a"]
    assert [r.token_ids for r in results] == [[2, 3], [1]]
    assert all(r.finish_reason is FinishReason.STOP for r in results)
    # The end-of-generation token's logprob counts, its length does not.
    assert results[0].cumulative_logprob == pytest.approx(math.log(0.3 * 0.8 * 0.9))
    assert results[0].score == pytest.approx(math.log(0.216) / 2)
    assert results[1].score == pytest.approx(math.log(0.3))


def test_without_early_stopping_a_running_beam_that_scores_better_goes_on() -> None:
    search = three_steps(max_new_tokens=4)
    # a,a,a scores log(.085)/3 = -0.82, better than the worst finished (log .3 = -1.20).
    assert not search.done
    search.step([logits(0.05, 0.8, 0.05, 0.05, 0.05), logits(0.2, 0.2, 0.2, 0.2, 0.2)])
    assert search.done  # max_new_tokens: the running beams finish by length
    results = search.results()
    # The longer beam wins under length_penalty 1: log(.068)/4 = -0.67 > log(.216)/2 = -0.77.
    assert [r.text for r in results] == ["aaaa", "bc"]
    assert [r.finish_reason for r in results] == [FinishReason.LENGTH, FinishReason.STOP]


def test_length_penalty_zero_stops_when_nothing_running_can_win() -> None:
    search = three_steps(length_penalty=0.0)
    # Cumulative logprobs only fall: a,a,a (log .085) can never beat "bc" (log .216).
    assert search.done
    # Without a length penalty the shorter "a" (log .3) comes first.
    assert [r.text for r in search.results()] == ["a", "bc"]


def test_stop_string_finishes_a_hypothesis_and_is_cut() -> None:
    search = BeamSearch(settings(stop=("bc",), early_stopping=True), [0, 1], Letters())
    search.step([logits(0.1, 0.5, 0.3, 0.05, 0.05)])
    search.step([logits(0.6, 0.2, 0.1, 0.05, 0.05), logits(0.05, 0.05, 0.05, 0.8, 0.05)])
    assert search.done
    results = search.results()
    # "bc" is cut from the text; its tokens count: log(.24) / 2 beats log(.3) / 1.
    assert [(r.text, r.token_ids) for r in results] == [("", [2, 3]), ("a", [1])]
    assert all(r.finish_reason is FinishReason.STOP for r in results)


def test_n_limits_the_beams_returned() -> None:
    search = three_steps(early_stopping=True, n=1)
    assert [r.text for r in search.results()] == ["bc"]


def test_logit_bias_changes_the_ranking() -> None:
    search = BeamSearch(settings(width=1, n=1, logit_bias={1: -100.0}), [3], Letters())
    search.step([logits(0.1, 0.5, 0.3, 0.05, 0.05)])
    assert search.running[0].token_ids() == [2]  # 'a' is banned


def test_logprob_entries_add_up_to_the_cumulative_logprob() -> None:
    def entry(row: npt.NDArray[np.float64], token: int) -> TokenLogprob:
        return TokenLogprob(token, str(token), [], float(row[token]))

    search = BeamSearch(settings(max_new_tokens=3), [0, 1], Letters(), entry)
    search.step([logits(0.1, 0.5, 0.3, 0.05, 0.05)])
    search.step([logits(0.1, 0.5, 0.3, 0.05, 0.05)] * 2)
    search.step([logits(0.1, 0.5, 0.3, 0.05, 0.05)] * 2)
    assert search.done
    for r in search.results():
        assert r.logprobs is not None and len(r.logprobs) == len(r.token_ids)
        total = sum(lp.logprob or 0.0 for lp in r.logprobs)
        assert r.finish_reason is FinishReason.LENGTH
        assert total == pytest.approx(r.cumulative_logprob)


class RandomModel:
    """Deterministic pseudo-random logits for every token prefix."""

    def __init__(self, vocab: int, seed: int) -> None:
        self.vocab = vocab
        self.seed = seed

    def __call__(self, prefix: list[int]) -> npt.NDArray[np.float32]:
        rng = np.random.default_rng([self.seed, len(prefix), *prefix])
        return (rng.standard_normal(self.vocab) * 3).astype(np.float32)


def greedy(model: RandomModel, max_new: int, bias: dict[int, float]) -> list[int]:
    out: list[int] = []
    while len(out) < max_new:
        row = model(out).astype(np.float64)
        for t, b in bias.items():
            row[t] += b
        token = int(np.argmax(row))
        if token == EOG:
            break
        out.append(token)
    return out


def run(search: BeamSearch, model: RandomModel) -> None:
    """Drive a search as the loop does, with a fake KV cache per slot that must stay right."""
    kv: dict[int, list[int]] = {slot: [] for slot in search.slots}
    while True:
        for beam in search.running:
            if beam.length:  # the step feeds the beam's last token into its slot
                kv[beam.slot].append(beam.last_token)
            assert kv[beam.slot] == beam.token_ids()
        plan = search.step([model(beam.token_ids()) for beam in search.running])
        if search.done:
            return
        for src, dst in plan.copies:
            kv[dst] = list(kv[src])
        for slot in plan.cleared:
            kv[slot] = []
        assert len({b.slot for b in search.running}) == len(search.running)


@pytest.mark.parametrize("seed", range(12))
def test_width_one_with_early_stopping_is_greedy(seed: int) -> None:
    model = RandomModel(vocab=12, seed=seed)
    bias = {3: -5.0} if seed % 2 else {}
    search = BeamSearch(
        settings(width=1, n=1, max_new_tokens=10, early_stopping=True, logit_bias=bias),
        [2],
        Letters(),
    )
    run(search, model)
    assert search.results()[0].token_ids == greedy(model, 10, bias)


@pytest.mark.parametrize("seed", range(6))
def test_width_one_without_early_stopping_is_greedy_at_length_penalty_zero(seed: int) -> None:
    model = RandomModel(vocab=12, seed=100 + seed)
    search = BeamSearch(
        settings(width=1, n=1, max_new_tokens=10, length_penalty=0.0), [0], Letters()
    )
    run(search, model)
    assert search.results()[0].token_ids == greedy(model, 10, {})


@pytest.mark.parametrize("seed", range(8))
def test_wider_search_keeps_slots_consistent_and_ranks_its_beams(seed: int) -> None:
    model = RandomModel(vocab=20, seed=200 + seed)
    search = BeamSearch(
        settings(width=4, n=4, max_new_tokens=8, length_penalty=0.5), [4, 5, 6, 7], Letters()
    )
    run(search, model)
    results = search.results()
    assert len(results) == 4
    assert len({tuple(r.token_ids) for r in results}) == 4
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    for r in results:
        length = max(len(r.token_ids), 1)
        assert r.score == pytest.approx(r.cumulative_logprob / length**0.5)
