"""Beam search bookkeeping: which hypotheses live, in which sequence slot, and when to stop.

Pure Python and numpy: no model, no KV cache, no clock. The loop owns the llama.cpp context and
drives one ``BeamSearch`` per request:

    search = BeamSearch(settings, slots, vocab)   # once the prompt is prefilled in slots[0]
    plan = search.step(logits)                    # raw logits of each running beam, in order
    ... apply plan.copies and plan.cleared to the KV cache; next step feed, for every beam in
        search.running, its last token into its slot ...
    if search.done: search.results()

The rules (the README documents them for clients):

- A beam's score is ``cumulative_logprob / max(generated_len, 1) ** length_penalty``, where
  ``generated_len`` counts the tokens the beam returns (an end-of-generation token is not
  returned, but its logprob is part of the cumulative logprob) and logprobs come from the
  log-softmax of the logits after ``logit_bias``.
- Every step each running beam proposes its ``2 * width`` most likely next tokens; all proposals
  are ranked by cumulative logprob (ties: earlier beam, then lower token id). In rank order, a
  proposal that ends its hypothesis (an end-of-generation token unless ``ignore_eos``, or a token
  that completes a stop string) becomes a finished hypothesis if it ranks among the first
  ``width`` proposals and is dropped otherwise; every other proposal becomes a running beam,
  until ``width`` of them run.
- A running beam that reaches ``max_new_tokens`` finishes with reason "length". The best
  ``width`` finished hypotheses are kept.
- The search ends when no beam runs, or when ``width`` hypotheses have finished and either
  ``early_stopping`` is set or the best running beam, scored as it stands, does not beat the
  worst of them. Since logprobs are never positive, that test is exact for
  ``length_penalty <= 0``; above 0 a longer beam could in principle still overtake (the same
  heuristic as Hugging Face transformers). With width 1 and ``early_stopping`` set, the search
  is exactly greedy decoding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from lmaas.protocol.engine import BeamResult, FinishReason, TokenLogprob
from lmaas.worker.text import IncrementalDecoder, StopMatcher

LogprobRow = npt.NDArray[np.float64]
EntryFn = Callable[[LogprobRow, int], TokenLogprob]


class Vocab(Protocol):
    def piece(self, token: int) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class BeamSettings:
    width: int
    n: int
    max_new_tokens: int
    length_penalty: float = 1.0
    early_stopping: bool = False
    stop: tuple[str, ...] = ()
    include_stop_str: bool = False
    ignore_eos: bool = False
    logit_bias: Mapping[int, float] = field(default_factory=dict)


def beam_score(cumulative_logprob: float, length: int, length_penalty: float) -> float:
    return cumulative_logprob / math.pow(max(length, 1), length_penalty)


def log_softmax(
    logits: npt.NDArray[np.floating[Any]], bias: Mapping[int, float] | None = None
) -> LogprobRow:
    """Log-probabilities (float64, a new array) of ``logits`` plus ``bias``."""
    x = np.array(logits, dtype=np.float64)
    if bias:
        ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        x[ids] += np.fromiter(bias.values(), dtype=np.float64, count=len(bias))
    top = x.max()
    x -= top + np.log(np.exp(x - top).sum())
    return x


@dataclass(frozen=True, slots=True)
class Candidate:
    beam: int  # index of the proposing beam in ``BeamSearch.running``
    token: int
    logprob: float
    cumulative: float


def top_candidates(
    rows: Sequence[LogprobRow], cumulative: Sequence[float], per_beam: int
) -> list[Candidate]:
    """The ``per_beam`` best tokens of every beam, all ranked by cumulative logprob."""
    out: list[Candidate] = []
    for beam, (row, cum) in enumerate(zip(rows, cumulative, strict=True)):
        k = min(per_beam, len(row))
        ids = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
        out += [Candidate(beam, int(t), float(row[t]), cum + float(row[t])) for t in ids]
    out.sort(key=lambda c: (-c.cumulative, c.beam, c.token))
    return out


@dataclass(frozen=True, slots=True)
class SlotPlan:
    """How the KV cache follows one step of the search."""

    slots: list[int]  # the slot of each new running beam, in order
    # (src, dst): clear dst, then give it src's cells (llama.cpp shares them, nothing is copied)
    copies: list[tuple[int, int]]
    cleared: list[int]  # slots of beams that died and whose slot is not reused


def plan_slots(parents: Sequence[int], live: Sequence[int], reserved: Sequence[int]) -> SlotPlan:
    """Place the new beams, given the slot of each one's parent (best beam first).

    The first child of a parent stays in the parent's slot; further children go to the slots
    of beams without children (or never used), which first receive a copy of the parent's
    cells. A parent's slot is never a copy destination, so copies may run in any order.
    """
    slots = [-1] * len(parents)
    kept: set[int] = set()
    for i, parent in enumerate(parents):
        if parent not in kept:
            kept.add(parent)
            slots[i] = parent
    free = [s for s in reserved if s not in kept]
    copies: list[tuple[int, int]] = []
    for i, parent in enumerate(parents):
        if slots[i] == -1:
            dst = free.pop(0)
            slots[i] = dst
            copies.append((parent, dst))
    used = set(slots)
    return SlotPlan(slots, copies, [s for s in live if s not in used])


@dataclass(slots=True, eq=False)
class _Node:
    """One token of a hypothesis; hypotheses share their common prefix."""

    parent: _Node | None
    token: int
    text: str  # the text this token released (stop strings held back until decided)
    entry: TokenLogprob | None
    length: int
    cumulative: float


@dataclass(slots=True, eq=False)
class Beam:
    """A running hypothesis and the slot that holds its KV cells."""

    node: _Node
    slot: int
    decoder: IncrementalDecoder
    stops: StopMatcher

    @property
    def last_token(self) -> int:
        return self.node.token

    @property
    def length(self) -> int:
        return self.node.length

    def token_ids(self) -> list[int]:
        """The tokens generated so far (what this beam's slot holds after the prompt, plus the
        last token, which is fed in the next step)."""
        return _path(self.node)[0]


@dataclass(slots=True, eq=False)
class _Finished:
    node: _Node
    tail: str  # text released when the hypothesis ended
    cumulative: float
    score: float
    reason: FinishReason


class BeamSearch:
    def __init__(
        self,
        settings: BeamSettings,
        slots: Sequence[int],
        vocab: Vocab,
        entry: EntryFn | None = None,
    ) -> None:
        if len(slots) != settings.width:
            raise ValueError("a beam search needs exactly `width` slots")
        self.settings = settings
        self.slots = list(slots)
        self.vocab = vocab
        self.entry = entry  # builds per-token logprobs when the client asked for them
        root = _Node(None, -1, "", None, 0, 0.0)
        stops = StopMatcher(list(settings.stop), include_stop=settings.include_stop_str)
        # Before the first step, the one "beam" is the prompt, prefilled in the first slot.
        self.running = [Beam(root, self.slots[0], IncrementalDecoder(), stops)]
        self.finished: list[_Finished] = []
        self.steps = 0
        self.done = False

    def step(self, logits: Sequence[npt.NDArray[np.floating[Any]]]) -> SlotPlan:
        """Advance every running beam by one token, from the raw logits of each (in order)."""
        if self.done or len(logits) != len(self.running):
            raise ValueError("one row of logits per running beam, while the search runs")
        s = self.settings
        rows = [log_softmax(row, s.logit_bias) for row in logits]
        candidates = top_candidates(rows, [b.node.cumulative for b in self.running], 2 * s.width)
        self.steps += 1
        children: list[tuple[Beam, _Node, IncrementalDecoder, StopMatcher]] = []
        for rank, c in enumerate(candidates):
            if len(children) == s.width:
                break
            parent = self.running[c.beam]
            if self.vocab.is_eog(c.token) and not s.ignore_eos:
                if rank < s.width:
                    self._finish(parent.node, parent.decoder.copy(), parent.stops.copy(), c)
                continue
            decoder, stops = parent.decoder.copy(), parent.stops.copy()
            text, hit_stop = stops.feed(decoder.feed(self.vocab.piece(c.token)))
            entry = self.entry(rows[c.beam], c.token) if self.entry is not None else None
            node = _Node(parent.node, c.token, text, entry, parent.length + 1, c.cumulative)
            if hit_stop:
                if rank < s.width:
                    self._finish(node, decoder, stops, c, stopped=True)
                continue
            children.append((parent, node, decoder, stops))
        if self.steps >= s.max_new_tokens:
            for _, node, decoder, stops in children:
                self._finish(node, decoder, stops, None, reason=FinishReason.LENGTH)
            children = []
        plan = plan_slots(
            [parent.slot for parent, *_ in children], [b.slot for b in self.running], self.slots
        )
        self.running = [
            Beam(node, slot, decoder, stops)
            for (_, node, decoder, stops), slot in zip(children, plan.slots, strict=True)
        ]
        self.done = not self.running or self._can_stop()
        return plan

    def _finish(
        self,
        node: _Node,
        decoder: IncrementalDecoder,
        stops: StopMatcher,
        candidate: Candidate | None,
        *,
        stopped: bool = False,
        reason: FinishReason = FinishReason.STOP,
    ) -> None:
        tail = ""
        if not stopped:
            text, _ = stops.feed(decoder.flush())
            tail = text + stops.flush()
        cumulative = node.cumulative if candidate is None else candidate.cumulative
        s = self.settings
        score = beam_score(cumulative, node.length, s.length_penalty)
        self.finished.append(_Finished(node, tail, cumulative, score, reason))
        self.finished.sort(key=lambda f: -f.score)  # stable: the earlier one first on a tie
        del self.finished[s.width :]

    def _can_stop(self) -> bool:
        s = self.settings
        if len(self.finished) < s.width:
            return False
        if s.early_stopping:
            return True
        best = self.running[0]  # beams are ranked, and all have the same length
        return beam_score(best.node.cumulative, best.length, s.length_penalty) <= (
            self.finished[-1].score
        )

    def results(self) -> list[BeamResult]:
        """The ``n`` best finished beams, best first (call once ``done``)."""
        out: list[BeamResult] = []
        for f in self.finished[: self.settings.n]:
            tokens, text, entries = _path(f.node)
            out.append(
                BeamResult(
                    token_ids=tokens,
                    text=text + f.tail,
                    finish_reason=f.reason,
                    cumulative_logprob=f.cumulative,
                    score=f.score,
                    logprobs=entries if self.entry is not None else None,
                )
            )
        return out


def _path(last: _Node) -> tuple[list[int], str, list[TokenLogprob]]:
    """Tokens, text and logprob entries from the first generated token to ``last``."""
    tokens: list[int] = []
    texts: list[str] = []
    entries: list[TokenLogprob] = []
    node: _Node | None = last
    while node is not None and node.parent is not None:
        tokens.append(node.token)
        texts.append(node.text)
        if node.entry is not None:
            entries.append(node.entry)
        node = node.parent
    return tokens[::-1], "".join(reversed(texts)), entries[::-1]
