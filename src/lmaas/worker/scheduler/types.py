"""The scheduler's data: a sequence's state, one step's plan, and the settings.

See ``core.py`` for how the scheduler uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt


class SeqStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class Sequence:
    request_id: str
    tokens: list[int]
    prompt_len: int
    max_new_tokens: int
    want_prompt_logits: bool = False
    status: SeqStatus = SeqStatus.WAITING
    slot: int = -1
    num_computed: int = 0
    admitted_order: int = -1
    # Prompt logits are produced once; a recompute after preemption skips them.
    prompt_logits_done: bool = False
    preemptions: int = 0
    # Beam search: all slots held (``slot`` is the first), and the slots of the live beams
    # once the prompt is prefilled (empty before). ``tokens`` stays the prompt;
    # ``num_computed`` counts the positions every live beam has in the KV cache.
    beam_width: int = 0
    slots: list[int] = field(default_factory=list)
    beam_slots: list[int] = field(default_factory=list)
    # Fair sharing (``fair.FairQueue``): whose request, its weight and class (0 = highest),
    # its order of arrival and the scheduler step it arrived at.
    tenant: str | None = None
    weight: float = 1.0
    rank: int = 0
    arrival: int = 0
    enqueued_step: int = 0
    # Prefix caching: whether this request may read and leave cached cells, and how many of
    # its prompt tokens came from the cache when it was first admitted.
    use_cache: bool = True
    cached_tokens: int = 0
    ever_admitted: bool = False
    prompt_array: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    # Steps in a row it sat out for a higher class's prefill (``hold_lower_classes``).
    held_steps: int = 0

    @property
    def is_beam(self) -> bool:
        return self.beam_width > 0

    @property
    def num_slots(self) -> int:
        return max(self.beam_width, 1)

    @property
    def decoding_beams(self) -> bool:
        return self.is_beam and bool(self.beam_slots)

    @property
    def prefilling(self) -> bool:
        """Its next work computes its prompt (or, after a preemption, what it had generated)
        rather than decoding one token."""
        if self.decoding_beams:
            return False
        return self.num_computed < self.prompt_len or self.num_computed + 1 < len(self.tokens)

    @property
    def num_generated(self) -> int:
        if self.decoding_beams:
            return self.num_computed - self.prompt_len + 1
        return len(self.tokens) - self.prompt_len

    @property
    def admission_cost(self) -> int:
        """Tokens this request may still cost: its tokens so far and every slot's budget."""
        left = max(self.max_new_tokens - self.num_generated, 0)
        return len(self.tokens) + self.num_slots * left

    @property
    def kv_cells(self) -> int:
        """KV cells in use (an upper bound for a beam search, whose beams share a prefix)."""
        if not self.is_beam:
            return self.num_computed
        prompt = min(self.num_computed, self.prompt_len)
        return prompt + len(self.beam_slots) * max(self.num_computed - self.prompt_len, 0)

    @property
    def cells_for_next_token(self) -> int:
        """Cells the next decode step adds (0 while the prompt is still being prefilled)."""
        if self.decoding_beams:
            return len(self.beam_slots)
        return 1 if self.num_computed >= len(self.tokens) - 1 else 0


@dataclass(frozen=True, slots=True)
class SeqWork:
    """Tokens of one sequence to feed in this step."""

    request_id: str
    slot: int
    start_pos: int
    token_ids: tuple[int, ...]
    # Sample a new token from the logits of the last token fed.
    sample: bool
    # Return logits for every token fed (prompt logprobs).
    all_logits: bool
    # A beam search's decode step: feed, at ``start_pos``, each live beam's last token into
    # its slot (the loop knows the tokens; ``token_ids`` is empty).
    beam_slots: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.beam_slots) or len(self.token_ids)


@dataclass(slots=True)
class StepPlan:
    work: list[SeqWork] = field(default_factory=list)
    # Slots whose KV cells must be cleared before this step's batch is decoded.
    released_slots: list[int] = field(default_factory=list)
    # Requests that were admitted (first scheduled) in this step.
    admitted: list[str] = field(default_factory=list)
    # Requests preempted in this step (back in the queue).
    preempted: list[str] = field(default_factory=list)
    # Prefix cache moves, as (source KV sequence id, destination id, cells), in this order:
    # ``saves`` before the released slots are cleared (a finished sequence's cells go to a
    # cache id), ``copies`` after (a newly admitted slot takes a cached prefix), then the
    # ``dropped`` cache ids are cleared.
    saves: list[tuple[int, int, int]] = field(default_factory=list)
    copies: list[tuple[int, int, int]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(w.num_tokens for w in self.work)

    @property
    def empty(self) -> bool:
        return not self.work


@dataclass(frozen=True, slots=True)
class SeqUpdate:
    request_id: str
    new_token: int | None
    # "length" when max_new_tokens is reached; the loop decides about EOS and stop strings.
    finished_by_length: bool


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int
    max_batch_tokens: int
    kv_capacity: int
    # A waiting request rises one priority class per this many steps it has waited.
    aging_steps: int = 2000
    # Prefix caching: KV sequence ids past the slots for cached prefixes (0: off), and the
    # most cells the cache may hold (None: as many as the running sequences leave free).
    prefix_ids: int = 0
    prefix_max_cells: int | None = None
    # A request waits for a running sequence to prefill a prefix they share when that saves
    # at least this many tokens.
    prefix_wait_min: int = 16
    # A step that prefills a prompt leaves out the sequences of lower priority classes.
    hold_lower_classes: bool = True
    max_held_steps: int = 4
