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

Waiting requests are admitted by priority class, then fairly across tenants (API keys) by
weight, first-come first-served within one tenant's class (``fair.FairQueue``). The request
chosen next waits for room rather than be overtaken. When it finds no free slot although it is
owed one, a running sequence is preempted for it (recomputed later, keeping its tokens): one of
a lower priority class, or else one of the tenant that holds the most slots beyond its fair
share (``max_num_seqs`` split by weight between the tenants that are running or waiting), its
most recently admitted. So a tenant flooding the model keeps at most its share while others
wait, and a newcomer's first token does not wait for a flood's requests to end.

``running_cap`` (at most ``max_num_seqs``) bounds the slots running sequences may hold; the
loop lowers it to keep a step under a latency target.

Prefix caching (``prefix.PrefixIndex``, on when ``prefix_ids`` > 0): a sequence that
finishes, or is preempted for another's fair share, leaves its computed cells indexed by their
tokens under a spare KV sequence id (``plan.saves``); a request admitted later whose prompt
starts with cached tokens copies those cells into its slot (``plan.copies``) and prefills only
the rest. Running sequences' computed prompts are sources too, and a request whose prompt
shares a long prefix with one still being prefilled waits for those cells rather than compute
them again (so ``n`` choices and a burst sharing a system prompt prefill it once). At least
one prompt token is always computed (its logits are needed). Cells count against
``kv_capacity`` once however many sequences share them (``prefix.CellMirror``); the least
recently used entries are evicted (``plan.dropped``) before any running sequence is preempted
for room.

A beam search (``add_request(..., beam_width=B)``) is one entry that holds ``B`` slots. It is
admitted only when ``B`` slots are free (requests behind it wait too rather than starve it),
prefills its prompt in its first slot, and then decodes one token for each of its live beams
per step, all in the same batch. The loop decides
which beams live and in which slots (``lmaas.worker.beam``) and reports them back through
``update_from_output(..., beam_slots=...)``. Its KV use is counted as the prompt once plus every
live beam's generated tokens (llama.cpp shares the cells of a common prefix, so this is an upper
bound). A preempted beam search starts over from its prompt.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from lmaas.worker.scheduler.fair import FairQueue
from lmaas.worker.scheduler.prefix import CellMirror, Match, PrefixIndex, common_prefix
from lmaas.worker.scheduler.types import (
    SchedulerConfig,
    SeqStatus,
    Sequence,
    SeqUpdate,
    SeqWork,
    StepPlan,
)

__all__ = ["Scheduler", "SchedulerConfig", "SeqStatus", "SeqUpdate", "SeqWork", "StepPlan"]


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        if config.max_batch_tokens < config.max_num_seqs:
            raise ValueError("max_batch_tokens must be >= max_num_seqs")
        self.config = config
        self._seqs: dict[str, Sequence] = {}
        self._waiting: FairQueue[Sequence] = FairQueue(config.aging_steps)
        self._running: list[Sequence] = []  # in admission order
        self._free_slots: list[int] = list(range(config.max_num_seqs - 1, -1, -1))
        self._released: list[int] = []
        self._saves: list[tuple[int, int, int]] = []
        n = config.max_num_seqs
        self._cells = CellMirror()
        self.prefix = (
            PrefixIndex(range(n, n + config.prefix_ids), on_drop=self._cells.clear)
            if config.prefix_ids > 0
            else None
        )
        self._admit_counter = 0
        self._arrivals = 0
        self._steps = 0
        self.running_cap = config.max_num_seqs
        # Preemptions since start, by reason: ``kv_cache`` (no room for the running set's next
        # tokens) and ``fairness`` (for a higher class or a tenant owed its share).
        self.preemptions: dict[str, int] = {"kv_cache": 0, "fairness": 0}

    # --- queries -------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        """Running requests (a beam search counts once)."""
        return len(self._running)

    @property
    def num_slots_used(self) -> int:
        """Sequence slots held by running requests (a beam search holds its width)."""
        return sum(s.num_slots for s in self._running)

    @property
    def num_free_slots(self) -> int:
        return len(self._free_slots)

    @property
    def kv_used(self) -> int:
        """KV cells in use: exactly, as the mirror counts them (shared cells once), plus an
        upper bound for each beam search's slots."""
        return self._cells.used + sum(s.kv_cells for s in self._running if s.is_beam)

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
        beam_width: int = 0,
        tenant: str | None = None,
        weight: float = 1.0,
        rank: int = 0,
        use_cache: bool = True,
    ) -> None:
        """Queue a request; ``beam_width >= 1`` makes it a beam search over that many slots.

        ``tenant`` (an API key's id; ``None`` is one shared tenant), ``weight`` (> 0) and
        ``rank`` (priority class, 0 highest) decide when it is admitted (``fair.FairQueue``).
        ``use_cache=False`` keeps it out of the prefix cache both ways.
        """
        if request_id in self._seqs:
            raise ValueError(f"duplicate request id {request_id!r}")
        if not prompt_tokens:
            raise ValueError("empty prompt")
        if beam_width > self.config.max_num_seqs:
            raise ValueError("beam width exceeds the number of sequence slots")
        if beam_width and (max_new_tokens < 1 or want_prompt_logits):
            raise ValueError("a beam search generates at least one token and no prompt logits")
        if len(prompt_tokens) + max(beam_width, 1) * max_new_tokens > self.config.kv_capacity:
            raise ValueError("request can never fit in the KV cache")
        if not weight > 0 or rank < 0:
            raise ValueError("weight must be > 0 and rank >= 0")
        seq = Sequence(
            request_id=request_id,
            tokens=list(prompt_tokens),
            prompt_len=len(prompt_tokens),
            max_new_tokens=max_new_tokens,
            want_prompt_logits=want_prompt_logits,
            beam_width=beam_width,
            tenant=tenant,
            weight=weight,
            rank=rank,
            arrival=self._arrivals,
            enqueued_step=self._steps,
            use_cache=use_cache and self.prefix is not None,
            prompt_array=np.asarray(prompt_tokens, dtype=np.int32),
        )
        self._arrivals += 1
        self._seqs[request_id] = seq
        self._waiting.push(seq)

    def finish(self, request_id: str) -> bool:
        """Remove a request (finished or aborted); its slot is cleared at the next step."""
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return False
        if seq.status is SeqStatus.RUNNING:
            self._running.remove(seq)
            self._save(seq)
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
        seq = self._running[-1]
        self._preempt(seq)
        self.preemptions["kv_cache"] += 1
        self._waiting.push_front(seq)
        return seq.request_id

    def _preempt(self, seq: Sequence, *, save: bool = False) -> None:
        """Back to waiting; with ``save`` its computed cells stay in the prefix cache, so its
        recompute once readmitted is a copy."""
        self._running.remove(seq)
        if save:
            self._save(seq)
        self._release_slot(seq)
        seq.status = SeqStatus.WAITING
        seq.num_computed = 0
        seq.beam_slots = []  # a beam search starts over
        seq.preemptions += 1

    def _save(self, seq: Sequence) -> None:
        """Index a leaving sequence's computed cells (the loop copies them at the next step)."""
        if self.prefix is None or not seq.use_cache or seq.is_beam or seq.num_computed <= 0:
            return
        n = min(seq.num_computed, len(seq.tokens))
        seq_id = self.prefix.insert(np.asarray(seq.tokens[:n], dtype=np.int32))
        if seq_id is not None:
            self._saves.append((seq.slot, seq_id, n))
            self._cells.copy_prefix(seq.slot, seq_id, n)
        limit = self.config.prefix_max_cells
        while limit is not None and self.prefix.cells > limit:
            if self.prefix.evict_lru(exclude=seq_id) is None:
                break

    def save_prompt(self, request_id: str) -> tuple[int, int, int] | None:
        """Index a beam search's prompt, just prefilled in its first slot, before its beams move
        cells between slots; returns the copy (source slot, cache id, cells) for the loop to
        make at once."""
        seq = self._seqs.get(request_id)
        if self.prefix is None or seq is None or not seq.use_cache or seq.slot < 0:
            return None
        seq_id = self.prefix.insert(seq.prompt_array)
        if seq_id is None:
            return None
        self._cells.create(seq_id, seq.prompt_len)  # beam slots are not mirrored
        return (seq.slot, seq_id, seq.prompt_len)

    def _release_slot(self, seq: Sequence) -> None:
        held = seq.slots or [seq.slot]
        for slot in held:
            self._cells.clear(slot)
        self._released += held
        self._free_slots += reversed(held)
        seq.slot = -1
        seq.slots = []

    # --- the step ------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        self._steps += 1
        budget = self.config.max_batch_tokens
        self._make_room_for_decodes(plan)
        self._preempt_for_waiting(plan)

        kv_free = self.config.kv_capacity - self.kv_used
        # With a request of a higher class waiting, lower classes' prompts are fed after it is
        # admitted (else a batch's long prompt would take the step's budget from it).
        head = self._waiting.peek(self._steps) if self.config.hold_lower_classes else None
        deferred: list[Sequence] = []
        # Higher classes first (in admission order within one), so their prompts get the
        # budget; a sequence held as long as it may be goes before them all.
        hold = self.config.hold_lower_classes
        running = sorted(self._running, key=self._order) if hold else self._running
        for seq in running:
            if budget <= 0 or kv_free <= 0:
                break
            if head is not None and seq.rank > head.rank and seq.prefilling:
                deferred.append(seq)
                continue
            if seq.decoding_beams:
                beams = len(seq.beam_slots)
                if beams > min(budget, kv_free):
                    continue  # all beams advance together or not at all
                plan.work.append(self._beam_work(seq))
                budget -= beams
                kv_free -= beams
                continue
            if seq.num_computed >= len(seq.tokens):
                continue  # nothing to feed until the loop finishes it
            work = self._work_for(seq, min(budget, kv_free))
            plan.work.append(work)
            budget -= len(work.token_ids)
            kv_free -= len(work.token_ids)

        budget, kv_free = self._admit_waiting(plan, budget, kv_free)
        for seq in deferred:
            if budget <= 0 or kv_free <= 0:
                break
            work = self._work_for(seq, min(budget, kv_free))
            plan.work.append(work)
            budget -= len(work.token_ids)
            kv_free -= len(work.token_ids)
        if self.config.hold_lower_classes:
            self._hold_lower_classes(plan)
        plan.released_slots = self._released
        self._released = []
        plan.saves, self._saves = self._saves, []
        if self.prefix is not None:
            plan.dropped = self.prefix.take_dropped()
        return plan

    def _admit_waiting(self, plan: StepPlan, budget: int, kv_free: int) -> tuple[int, int]:
        """Admit waiting requests in the fair queue's order while they fit; the budget and
        KV cells left."""
        while budget > 0 and (seq := self._waiting.peek(self._steps)) is not None:
            # Admit only if its whole prompt (and a first token of each beam) fits next to what
            # is running now, otherwise it would be preempted again almost at once; and only
            # with all its slots. The request chosen next waits rather than be overtaken.
            if self._slots_short(seq) or seq.request_id in plan.preempted:
                break  # no slot; or pushed out for room a moment ago: not back in this step
            match = self._match(seq)
            if self._wait_for_prefill(seq, match):
                break
            need = len(seq.tokens) - (match.length if match else 0) + seq.num_slots
            kv_free = self._evict_for(need, kv_free, keep=match.seq_id if match else None)
            if need > kv_free:
                break
            self._waiting.pop(seq)
            seq.slots = [self._free_slots.pop() for _ in range(seq.num_slots)]
            seq.slot = seq.slots[0]
            seq.status = SeqStatus.RUNNING
            seq.admitted_order = self._admit_counter
            self._admit_counter += 1
            self._running.append(seq)
            plan.admitted.append(seq.request_id)
            if match is not None:
                seq.num_computed = match.length
                plan.copies.append((match.seq_id, seq.slot, match.length))
                if not seq.is_beam:
                    self._cells.copy_prefix(match.seq_id, seq.slot, match.length)
            if not seq.ever_admitted:
                seq.ever_admitted = True
                seq.cached_tokens = min(match.length, seq.prompt_len) if match else 0
            work = self._work_for(seq, min(budget, kv_free))
            plan.work.append(work)
            budget -= len(work.token_ids)
            kv_free -= len(work.token_ids)
        return budget, kv_free

    def _order(self, seq: Sequence) -> int:
        """Feeding order: a sequence held as long as it may be first, then by class."""
        return -1 if seq.held_steps >= self.config.max_held_steps else seq.rank

    def _hold_lower_classes(self, plan: StepPlan) -> None:
        """While a request prefills its prompt, sequences of lower classes sit the step out:
        an interactive request's first token then waits for its own prompt only, not for a
        batch's decodes beside it (on a CPU a step costs about its number of tokens, so the
        batch loses little: its decodes run one step later). A sequence sits out at most
        ``max_held_steps`` steps in a row, so a stream of prompts cannot starve it."""
        prefilling = [
            seq.rank
            for w in plan.work
            if not w.beam_slots and (seq := self._seqs[w.request_id]).prefilling
        ]
        top = min(prefilling, default=None)
        kept, freed = [], 0
        for w in plan.work:
            seq = self._seqs[w.request_id]
            if top is None or seq.rank <= top or seq.held_steps >= self.config.max_held_steps:
                seq.held_steps = 0
                kept.append(w)
            else:
                freed += w.num_tokens
        # Whoever had something to feed and is not in the step sat it out (held, or left
        # without budget behind a higher class's prompt).
        in_step = {w.request_id for w in kept}
        for seq in self._running:
            if seq.request_id not in in_step and (
                seq.decoding_beams or seq.num_computed < len(seq.tokens)
            ):
                seq.held_steps += 1
        # The tokens (and KV cells) the held sequences were given go to the prompts kept,
        # which the step's budget may have cut short.
        for i, w in enumerate(kept):
            seq = self._seqs[w.request_id]
            more = len(seq.tokens) - (w.start_pos + len(w.token_ids))
            if freed <= 0:
                break
            if w.beam_slots or more <= 0:
                continue
            add = min(more, freed)
            kept[i] = self._work_for(seq, len(w.token_ids) + add)
            freed -= add
        plan.work = kept

    def _match(self, seq: Sequence) -> Match | None:
        """The longest prefix of ``seq`` whose cells are cached or computed by a running
        sequence; one token is always left to compute, and prompt logits are never skipped."""
        if self.prefix is None or not self._may_copy(seq):
            return None
        tokens = np.asarray(seq.tokens, dtype=np.int32)
        return self.prefix.match(tokens, len(tokens) - 1, self._running_sources())

    def _may_copy(self, seq: Sequence) -> bool:
        """Whether ``seq`` may take cached cells: the cache is on, it did not opt out, and it
        needs no prompt logits (they come from its own prefill)."""
        if self.prefix is None or not seq.use_cache:
            return False
        return not (seq.want_prompt_logits and not seq.prompt_logits_done)

    def _running_sources(self) -> list[tuple[int, npt.NDArray[np.int32]]]:
        return [
            (s.slot, s.prompt_array[: min(s.num_computed, s.prompt_len)])
            for s in self._running
            if s.use_cache and not s.is_beam and s.num_computed > 0
        ]

    def _wait_for_prefill(self, seq: Sequence, match: Match | None) -> bool:
        """Whether ``seq`` should wait for a running sequence to finish prefilling a prefix
        they share (worth ``prefix_wait_min`` tokens more than ``match``) and copy it then."""
        if not self._may_copy(seq):
            return False
        have = match.length if match else 0
        tokens = np.asarray(seq.tokens[: len(seq.tokens) - 1], dtype=np.int32)
        for s in self._running:
            if not s.use_cache or s.is_beam or s.num_computed >= s.prompt_len:
                continue
            shared = common_prefix(tokens, s.prompt_array)
            if shared - have >= self.config.prefix_wait_min and s.num_computed < shared:
                return True
        return False

    def _evict_for(self, need: int, kv_free: int, *, keep: int | None) -> int:
        """Evict cached prefixes (least recently used first) until ``need`` cells are free."""
        while need > kv_free and self.prefix is not None:
            used = self.kv_used
            if self.prefix.evict_lru(exclude=keep) is None:
                break
            kv_free += used - self.kv_used  # nothing, when running sequences share its cells
        return kv_free

    def _slots_short(self, seq: Sequence) -> bool:
        """Whether ``seq`` finds too few free slots (within ``running_cap``) to start."""
        used = self.config.max_num_seqs - len(self._free_slots)
        return seq.num_slots > min(len(self._free_slots), self.running_cap - used)

    def _fair_shares(self) -> tuple[dict[str | None, int], dict[str | None, float]]:
        """Slots each tenant holds, and its fair share of ``max_num_seqs`` by weight among the
        tenants running or waiting."""
        used: dict[str | None, int] = {}
        weight: dict[str | None, float] = {}
        for s in self._running:
            used[s.tenant] = used.get(s.tenant, 0) + s.num_slots
            weight[s.tenant] = s.weight
        for s in self._waiting:
            weight.setdefault(s.tenant, s.weight)
        total = sum(weight.values())
        cap = min(self.running_cap, self.config.max_num_seqs)
        return used, {t: cap * w / total for t, w in weight.items()}

    def _preempt_for_waiting(self, plan: StepPlan) -> None:
        """Preempt a running sequence for the request next in line when it is owed a slot.

        Never for a request that was itself preempted for room, nor for a beam search (it
        would need several victims), and never a beam search as the victim (it restarts)."""
        head = self._waiting.peek(self._steps)
        if head is None or head.is_beam or self._waiting.is_front(head):
            return
        if not self._slots_short(head):
            return
        victim = self._victim_for(head)
        used = self.config.max_num_seqs - len(self._free_slots)
        if victim is None or used - victim.num_slots + head.num_slots > self.running_cap:
            return
        self._preempt(victim, save=True)
        self.preemptions["fairness"] += 1
        self._waiting.push_tenant_front(victim)
        plan.preempted.append(victim.request_id)

    def _victim_for(self, head: Sequence) -> Sequence | None:
        candidates = [s for s in self._running if not s.is_beam]
        lower = [s for s in candidates if s.rank > head.rank]
        if lower:  # a lower class first, its most recently admitted
            worst = max(s.rank for s in lower)
            return [s for s in lower if s.rank == worst][-1]
        used, share = self._fair_shares()
        if used.get(head.tenant, 0) + head.num_slots > share[head.tenant]:
            return None  # the newcomer's tenant already has its share
        over = [
            s
            for s in candidates
            if s.tenant != head.tenant and used[s.tenant] > share.get(s.tenant, 0.0)
        ]
        if not over:
            return None
        tenant = max(over, key=lambda s: used[s.tenant] / s.weight).tenant
        return [s for s in over if s.tenant == tenant][-1]

    def _make_room_for_decodes(self, plan: StepPlan) -> None:
        """Evict cached prefixes, then preempt the youngest sequences, until every running
        one can grow by a token."""
        while self._running:
            needed = sum(s.cells_for_next_token for s in self._running)
            if self.kv_used + needed <= self.config.kv_capacity:
                return
            if self.prefix is not None and self.prefix.evict_lru() is not None:
                continue
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

    def _beam_work(self, seq: Sequence) -> SeqWork:
        return SeqWork(
            request_id=seq.request_id,
            slot=seq.slot,
            start_pos=seq.num_computed,
            token_ids=(),
            sample=True,
            all_logits=False,
            beam_slots=tuple(seq.beam_slots),
        )

    def update_from_output(
        self,
        plan: StepPlan,
        sampled: Mapping[str, int],
        beam_slots: Mapping[str, list[int]] | None = None,
    ) -> list[SeqUpdate]:
        """Commit the step: advance ``num_computed`` and append the sampled tokens.

        A sequence finished or aborted while the step ran is skipped. A sequence whose prompt
        is done and that may generate no token (``max_new_tokens == 0``) finishes by length.
        A beam search that sampled reports the slots of its live beams in ``beam_slots``
        (none: the search has ended and the loop finishes it).
        """
        updates: list[SeqUpdate] = []
        for work in plan.work:
            seq = self._seqs.get(work.request_id)
            if seq is None or seq.status is not SeqStatus.RUNNING or seq.slot != work.slot:
                continue
            if seq.is_beam:
                updates += self._update_beams(seq, work, beam_slots or {})
                continue
            seq.num_computed = work.start_pos + len(work.token_ids)
            self._cells.append(seq.slot, len(work.token_ids))
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

    def _update_beams(
        self, seq: Sequence, work: SeqWork, beam_slots: Mapping[str, list[int]]
    ) -> list[SeqUpdate]:
        # Every beam fed one token at the same position; a prefill chunk fed several.
        seq.num_computed = work.start_pos + (1 if work.beam_slots else len(work.token_ids))
        if seq.num_computed < seq.prompt_len or not work.sample:
            return []  # more prompt to prefill
        live = list(beam_slots.get(seq.request_id, ()))
        if not set(live) <= set(seq.slots) or len(set(live)) != len(live):
            raise ValueError(f"beam slots {live} are not distinct slots of {seq.request_id!r}")
        seq.beam_slots = live
        at_length = bool(live) and seq.num_generated >= seq.max_new_tokens
        return [SeqUpdate(seq.request_id, None, at_length)]

    def on_decode_failure(self) -> str | None:
        """The engine could not place the batch in its cache: drop the prefix cache (cleared
        at the next step) or, when it is empty, shed the youngest sequence."""
        if self.prefix is not None and len(self.prefix):
            self.prefix.clear()
            return None
        return self.preempt_youngest()
