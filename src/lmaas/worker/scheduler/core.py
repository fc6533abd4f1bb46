"""A pure, step-shaped continuous-batching scheduler.

No I/O, no model, no clock. The worker loop drives it:

    plan = scheduler.schedule()            # which tokens of which sequences go into this step
    ... clear KV of plan.released_slots, build one batch from plan.work, decode ...
    updates = scheduler.update_from_output(plan, sampled)   # commit progress, append tokens
    scheduler.finish(request_id)           # stop strings / EOS found by the loop

Each sequence has ``tokens`` (prompt followed by generated tokens) and ``num_computed`` (how many
of them are in the KV cache). A step feeds ``tokens[num_computed:num_computed + chunk]``; when a
chunk reaches the end of ``tokens`` the step samples one new token for it. Decoding and prompt
prefill are therefore the same thing, and a long prompt is prefilled in chunks that share steps
with the decoding sequences instead of stalling them.

KV cells are a shared pool (``kv_capacity``). When the running sequences would outgrow it, the
most recently admitted one is preempted: its slot and cells are released and it goes back to the
front of the queue to be recomputed later, keeping the tokens it already generated.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum


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

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - self.prompt_len


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


@dataclass(slots=True)
class StepPlan:
    work: list[SeqWork] = field(default_factory=list)
    # Slots whose KV cells must be cleared before this step's batch is decoded.
    released_slots: list[int] = field(default_factory=list)
    # Requests that were admitted (first scheduled) in this step.
    admitted: list[str] = field(default_factory=list)
    # Requests preempted in this step (back in the queue).
    preempted: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(w.token_ids) for w in self.work)

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


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        if config.max_batch_tokens < config.max_num_seqs:
            raise ValueError("max_batch_tokens must be >= max_num_seqs")
        self.config = config
        self._seqs: dict[str, Sequence] = {}
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []  # in admission order
        self._free_slots: list[int] = list(range(config.max_num_seqs - 1, -1, -1))
        self._released: list[int] = []
        self._admit_counter = 0

    # --- queries -------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def kv_used(self) -> int:
        return sum(s.num_computed for s in self._running)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def get(self, request_id: str) -> Sequence | None:
        return self._seqs.get(request_id)

    # --- mutations -----------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_tokens: list[int],
        max_new_tokens: int,
        *,
        want_prompt_logits: bool = False,
    ) -> None:
        if request_id in self._seqs:
            raise ValueError(f"duplicate request id {request_id!r}")
        if not prompt_tokens:
            raise ValueError("empty prompt")
        if len(prompt_tokens) + max_new_tokens > self.config.kv_capacity:
            raise ValueError("request can never fit in the KV cache")
        seq = Sequence(
            request_id=request_id,
            tokens=list(prompt_tokens),
            prompt_len=len(prompt_tokens),
            max_new_tokens=max_new_tokens,
            want_prompt_logits=want_prompt_logits,
        )
        self._seqs[request_id] = seq
        self._waiting.append(seq)

    def finish(self, request_id: str) -> bool:
        """Remove a request (finished or aborted); its slot is cleared at the next step."""
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return False
        if seq.status is SeqStatus.RUNNING:
            self._running.remove(seq)
            self._release_slot(seq)
        else:
            self._waiting.remove(seq)
        seq.status = SeqStatus.FINISHED
        return True

    abort = finish

    def preempt_youngest(self) -> str | None:
        """Send the most recently admitted running sequence back to the queue."""
        if not self._running:
            return None
        seq = self._running.pop()
        self._release_slot(seq)
        seq.status = SeqStatus.WAITING
        seq.num_computed = 0
        seq.preemptions += 1
        self._waiting.appendleft(seq)
        return seq.request_id

    def _release_slot(self, seq: Sequence) -> None:
        self._released.append(seq.slot)
        self._free_slots.append(seq.slot)
        seq.slot = -1

    # --- the step ------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget = self.config.max_batch_tokens
        self._make_room_for_decodes(plan)

        kv_free = self.config.kv_capacity - self.kv_used
        for seq in self._running:
            if budget <= 0 or kv_free <= 0:
                break
            if seq.num_computed >= len(seq.tokens):
                continue  # nothing to feed until the loop finishes it
            work = self._work_for(seq, min(budget, kv_free))
            plan.work.append(work)
            budget -= len(work.token_ids)
            kv_free -= len(work.token_ids)

        while self._waiting and self._free_slots and budget > 0:
            seq = self._waiting[0]
            # Admit only if its whole prompt fits next to what is running now: otherwise it
            # would be preempted again almost at once.
            if len(seq.tokens) + 1 > kv_free:
                break
            self._waiting.popleft()
            seq.slot = self._free_slots.pop()
            seq.status = SeqStatus.RUNNING
            seq.admitted_order = self._admit_counter
            self._admit_counter += 1
            self._running.append(seq)
            plan.admitted.append(seq.request_id)
            work = self._work_for(seq, min(budget, kv_free))
            plan.work.append(work)
            budget -= len(work.token_ids)
            kv_free -= len(work.token_ids)

        plan.released_slots = self._released
        self._released = []
        return plan

    def _make_room_for_decodes(self, plan: StepPlan) -> None:
        """Preempt the youngest sequences until every running one can grow by a token."""
        while self._running:
            needed = sum(1 for s in self._running if s.num_computed >= len(s.tokens) - 1)
            if self.kv_used + needed <= self.config.kv_capacity:
                return
            preempted = self.preempt_youngest()
            if preempted is not None:
                plan.preempted.append(preempted)

    def _work_for(self, seq: Sequence, limit: int) -> SeqWork:
        remaining = len(seq.tokens) - seq.num_computed
        chunk = min(remaining, limit)
        start = seq.num_computed
        reaches_end = start + chunk == len(seq.tokens)
        in_prompt = start < seq.prompt_len
        return SeqWork(
            request_id=seq.request_id,
            slot=seq.slot,
            start_pos=start,
            token_ids=tuple(seq.tokens[start : start + chunk]),
            sample=reaches_end and seq.max_new_tokens > seq.num_generated,
            all_logits=seq.want_prompt_logits and in_prompt and not seq.prompt_logits_done,
        )

    def update_from_output(self, plan: StepPlan, sampled: dict[str, int]) -> list[SeqUpdate]:
        """Commit the step: advance ``num_computed`` and append the sampled tokens.

        A sequence finished or aborted while the step ran is skipped. A sequence whose prompt
        is done and that may generate no token (``max_new_tokens == 0``) finishes by length.
        """
        updates: list[SeqUpdate] = []
        for work in plan.work:
            seq = self._seqs.get(work.request_id)
            if seq is None or seq.status is not SeqStatus.RUNNING or seq.slot != work.slot:
                continue
            seq.num_computed = work.start_pos + len(work.token_ids)
            if seq.num_computed >= seq.prompt_len and seq.want_prompt_logits:
                seq.prompt_logits_done = True
            if seq.num_computed < len(seq.tokens):
                continue  # more prompt to prefill
            token = sampled.get(work.request_id) if work.sample else None
            if token is not None:
                seq.tokens.append(token)
            at_length = seq.num_generated >= seq.max_new_tokens
            updates.append(SeqUpdate(work.request_id, token, at_length))
        return updates

    def on_decode_failure(self) -> str | None:
        """The engine could not place the batch in its cache: shed the youngest sequence."""
        return self.preempt_youngest()
