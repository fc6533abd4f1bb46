"""The worker's step loop: take new requests, schedule, decode one batch, sample, emit.

A beam search request runs as a ``BeamSearch`` (``lmaas.worker.beam``) over the slots the
scheduler gave it: its beams decode in the same batch as every other sequence, and after each
step the loop moves KV cells between its slots as the search says.

One thread runs ``EngineLoop.run``; the IPC reader thread only calls ``submit`` and ``abort``
(which go through a queue) and ``prepare`` (which reads the vocabulary, never the context;
for a request with a grammar, it runs on the preparer's thread instead, as may ``discard``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from lmaas.errors import InternalError, InvalidRequestError
from lmaas.protocol.engine import (
    FinishReason,
    GenerateRequest,
    TokenEvent,
    TokenLogprob,
)
from lmaas.worker.backends.base import BatchEntry, GenerationBackend
from lmaas.worker.beam import BeamSearch, EntryFn
from lmaas.worker.intake import ActiveRequest, prepare
from lmaas.worker.scheduler import Scheduler, SchedulerConfig, StepPlan
from lmaas.worker.scheduler.cap import StepTimeCap

log = logging.getLogger(__name__)

EmitFn = Callable[[list[TokenEvent], dict[str, int]], None]


class EngineLoop:
    def __init__(
        self,
        backend: GenerationBackend,
        emit: EmitFn,
        *,
        max_num_seqs: int,
        max_batch_tokens: int,
        target_tpot_ms: float | None = None,
        prefix_max_cells: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.emit = emit
        self.clock = clock
        self.step_cap = StepTimeCap(max_num_seqs, target_tpot_ms)
        self.generated = 0  # tokens sampled (every beam's) since start; the gateway's rate
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=max_num_seqs,
                max_batch_tokens=max_batch_tokens,
                kv_capacity=backend.kv_capacity,
                prefix_ids=backend.prefix_ids,
                prefix_max_cells=prefix_max_cells,
            )
        )
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._active: dict[str, ActiveRequest] = {}
        self._groups: dict[str, list[ActiveRequest]] = {}
        self._stop = threading.Event()
        self.steps = 0
        self.last_step_at = clock()

    # --- called from other threads -------------------------------------------------------

    def prepare(self, req: GenerateRequest) -> ActiveRequest:
        """Tokenize and validate (``intake.prepare``); raises ``InvalidRequestError`` (or a
        subclass) with a client-facing message."""
        return prepare(self.backend, self.scheduler.config, req, self.clock())

    def submit(self, active: ActiveRequest) -> None:
        self._inbox.put(("add", active))

    def discard(self, active: ActiveRequest) -> None:
        """Free what ``prepare`` built for a request that will not be submitted."""
        self._free_sampler(active)

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(("wake", None))

    def stats(self) -> dict[str, int]:
        """Sequence slots in use (a beam search holds its width), requests waiting, tokens
        sampled, KV cells in use (cached prefixes included) and in all, and preemptions since
        start by reason."""
        s = self.scheduler
        return {
            "running": s.num_slots_used,
            "waiting": s.num_waiting,
            "gen": self.generated,
            "kv": s.kv_used,
            "kvt": s.config.kv_capacity,
            "pre_kv": s.preemptions["kv_cache"],
            "pre_fair": s.preemptions["fairness"],
        }

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stop.is_set():
            self._drain_inbox(block=not self.scheduler.has_work())
            if self.scheduler.has_work():
                self.step()
        for rid in list(self._active):
            self._close(rid)

    def _drain_inbox(self, *, block: bool) -> None:
        try:
            kind, payload = self._inbox.get(block=block, timeout=0.5 if block else None)
        except queue.Empty:
            return
        events: list[TokenEvent] = []
        while True:
            if kind == "add":
                self._add_or_hold(payload)
            elif kind == "abort" and self._drop_held(payload):
                pass
            elif kind == "abort" and payload in self._active:
                active = self._active[payload]
                self.scheduler.finish(payload)
                events.append(self._final_event(active, FinishReason.ABORT, ""))
                self._close(payload)
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                break
        if events:
            self.emit(events, self.stats())

    def _add_or_hold(self, active: ActiveRequest) -> None:
        """Add a request, or hold it until every member of its group has arrived."""
        group, size = active.req.group, active.req.group_size
        if group is None or size <= 1:
            self._add(active)
            return
        members = self._groups.setdefault(group, [])
        members.append(active)
        if len(members) >= size:
            del self._groups[group]
            for member in members:
                self._add(member)

    def _drop_held(self, request_id: str) -> bool:
        """Abort a request still held for its group; the rest of the group stops waiting."""
        for group, members in self._groups.items():
            member = next((m for m in members if m.req.request_id == request_id), None)
            if member is None:
                continue
            members.remove(member)
            self._free_sampler(member)
            for other in members:
                other.req.group_size -= 1
            if not members or len(members) >= members[0].req.group_size:
                del self._groups[group]
                for other in members:
                    self._add(other)
            return True
        return False

    def _add(self, active: ActiveRequest) -> None:
        rid = active.req.request_id
        if rid in self._active:  # a duplicate id would corrupt the other request's slot
            self._free_sampler(active)
            return
        self._active[rid] = active
        try:
            self.scheduler.add_request(
                rid,
                active.prompt_ids,
                active.max_new_tokens,
                want_prompt_logits=active.req.prompt_logprobs is not None,
                beam_width=active.beam_settings.width if active.beam_settings else 0,
                tenant=active.req.tenant,
                weight=active.req.weight,
                rank=active.req.priority.rank,
                use_cache=active.req.cache_prompt,
            )
        except ValueError as exc:  # prepare() should have caught it; never let it kill the loop
            event = self._final_event(active, FinishReason.ABORT, "")
            event.error = InvalidRequestError(str(exc))
            self._close(rid)
            self.emit([event], self.stats())

    def step(self) -> None:
        plan = self.scheduler.schedule()
        self._move_cells(plan)
        for rid in plan.preempted:
            self._restart_beam(rid)
        now = self.clock()
        for rid in plan.admitted:
            active = self._active[rid]
            if active.queue_time is None:
                active.queue_time = now - active.arrival
                seq = self.scheduler.get(rid)
                active.cached_tokens = seq.cached_tokens if seq is not None else 0
        if plan.empty:
            return
        entries, sample_at, beams_at = self._build_batch(plan)
        started_at = self.clock()
        status = self.backend.decode(entries)
        self.steps += 1
        self.last_step_at = self.clock()
        if len(entries) == len(plan.work):  # a pure decode step: its time is every one's TPOT
            self.scheduler.running_cap = self.step_cap.observe(
                self.last_step_at - started_at, sum(len(w.beam_slots) or 1 for w in plan.work)
            )
        if status == 1:
            shed = self.scheduler.on_decode_failure()
            if shed is not None:
                self._restart_beam(shed)
            log.warning("KV cache full; preempted %s", shed)
            return
        if status != 0:
            self._fail_plan(plan, f"the engine failed to decode (status {status})")
            return
        self._collect_prompt_logprobs(plan, sample_at)
        sampled, logprobs = self._sample(plan, sample_at)
        beam_slots, searches_done, started = self._step_beams(plan, sample_at, beams_at)
        self.generated += len(sampled) + sum(len(v) for v in beams_at.values())
        updates = self.scheduler.update_from_output(plan, sampled, beam_slots)
        events = [
            self._advance(u.request_id, u.new_token, u.finished_by_length, logprobs)
            for u in updates
            if u.request_id not in beam_slots
        ]
        events += [self._beams_started(rid) for rid in started if rid not in searches_done]
        events += [self._finish_beams(rid) for rid in searches_done]
        self.emit([e for e in events if e is not None], self.stats())

    def _move_cells(self, plan: StepPlan) -> None:
        """The plan's KV moves, in the order ``StepPlan`` gives."""
        b = self.backend
        for src, dst, n in plan.saves:
            b.copy_prefix(src, dst, n)
        for slot in plan.released_slots:
            b.clear_slot(slot)
        for src, dst, n in plan.copies:
            b.copy_prefix(src, dst, n)
        for seq_id in plan.dropped:
            b.clear_slot(seq_id)

    def _build_batch(
        self, plan: StepPlan
    ) -> tuple[list[BatchEntry], dict[str, int], dict[str, list[int]]]:
        entries: list[BatchEntry] = []
        sample_at: dict[str, int] = {}  # request id -> batch index of its last token
        beams_at: dict[str, list[int]] = {}  # beam search -> batch index of each running beam
        for work in plan.work:
            if work.beam_slots:
                search = self._active[work.request_id].beam
                assert search is not None
                if tuple(b.slot for b in search.running) != work.beam_slots:
                    raise RuntimeError(f"beam slots of {work.request_id} out of step")
                beams_at[work.request_id] = []
                for beam in search.running:
                    entries.append(BatchEntry(beam.slot, work.start_pos, beam.last_token, True))
                    beams_at[work.request_id].append(len(entries) - 1)
                continue
            last = len(work.token_ids) - 1
            for j, token in enumerate(work.token_ids):
                want = work.all_logits or (work.sample and j == last)
                entries.append(BatchEntry(work.slot, work.start_pos + j, token, want))
            sample_at[work.request_id] = len(entries) - 1
        return entries, sample_at, beams_at

    def _sample(
        self, plan: StepPlan, sample_at: dict[str, int]
    ) -> tuple[dict[str, int], dict[str, TokenLogprob]]:
        sampled: dict[str, int] = {}
        logprobs: dict[str, TokenLogprob] = {}
        for work in plan.work:
            if not work.sample:
                continue
            active = self._active[work.request_id]
            if active.sampler is None:
                continue  # a beam search: _step_beams
            idx = sample_at[work.request_id]
            token = self.backend.sample(active.sampler, idx)
            sampled[work.request_id] = token
            k = active.req.logprobs
            if k is not None:
                logprobs[work.request_id] = self._logprob_entry(
                    self.backend.logprobs_row(idx), token, k
                )
        return sampled, logprobs

    def _step_beams(
        self, plan: StepPlan, sample_at: dict[str, int], beams_at: dict[str, list[int]]
    ) -> tuple[dict[str, list[int]], list[str], list[str]]:
        """Advance every beam search of the step; returns each one's live slots, the searches
        that have ended and those that started (their prompt is prefilled)."""
        live: dict[str, list[int]] = {}
        done: list[str] = []
        started: list[str] = []
        for work in plan.work:
            active = self._active[work.request_id]
            settings = active.beam_settings
            if settings is None or not work.sample:
                continue
            if work.beam_slots:
                rows = beams_at[work.request_id]  # batch indices of the beams' logits
            else:  # the prompt is prefilled: the search starts from its last logits
                seq = self.scheduler.get(work.request_id)
                assert seq is not None
                save = self.scheduler.save_prompt(work.request_id)
                if save is not None:  # before the beams take the prompt's slot over
                    self.backend.copy_prefix(*save)
                active.beam = BeamSearch(
                    settings, seq.slots, self.backend, self._entry_fn(active.req.logprobs)
                )
                rows = [sample_at[work.request_id]]
                started.append(work.request_id)
            search = active.beam
            assert search is not None
            slot_plan = search.step([self.backend.logits(i) for i in rows])
            if search.done:
                live[work.request_id] = []
                done.append(work.request_id)
                continue
            for src, dst in slot_plan.copies:
                self.backend.copy_slot(src, dst)
            for slot in slot_plan.cleared:
                self.backend.clear_slot(slot)
            live[work.request_id] = slot_plan.slots
        return live, done, started

    def _entry_fn(self, k: int | None) -> EntryFn | None:
        """How a beam search builds its per-token logprobs (``k`` alternatives), if asked."""
        if k is None:
            return None
        return lambda row, token: self._logprob_entry(row, token, k)

    def _beams_started(self, rid: str) -> TokenEvent | None:
        """A search emits nothing until it ends; this one empty event tells the gateway (and
        the running-sequences gauge, through the stats it carries) that it runs."""
        active = self._active.get(rid)
        if active is None:
            return None
        event = TokenEvent(request_id=rid, prompt_tokens=len(active.prompt_ids))
        self._attach_once(active, event)
        return event

    def _finish_beams(self, rid: str) -> TokenEvent | None:
        active = self._active.get(rid)
        if active is None or active.beam is None:
            return None
        beams = active.beam.results()
        active.completion_tokens = sum(len(b.token_ids) for b in beams)
        finish = beams[0].finish_reason if beams else FinishReason.LENGTH
        event = self._final_event(active, finish, "")
        event.beams = beams
        self.scheduler.finish(rid)
        self._close(rid)
        return event

    def _restart_beam(self, rid: str) -> None:
        """A preempted beam search lost its KV cells: it starts over once readmitted."""
        active = self._active.get(rid)
        if active is not None:
            active.beam = None

    def _collect_prompt_logprobs(self, plan: StepPlan, sample_at: dict[str, int]) -> None:
        for work in plan.work:
            if not work.all_logits:
                continue
            active = self._active[work.request_id]
            seq = self.scheduler.get(work.request_id)
            k = active.req.prompt_logprobs
            if seq is None or k is None:
                continue
            if active.prompt_logprobs is None:
                first = seq.tokens[0]
                active.prompt_logprobs = [
                    TokenLogprob(first, self._text(first), list(self.backend.piece(first)), None)
                ]
            base = sample_at[work.request_id] - len(work.token_ids) + 1
            for j in range(len(work.token_ids)):
                target_pos = work.start_pos + j + 1
                if target_pos >= seq.prompt_len:
                    break
                row = self.backend.logprobs_row(base + j)
                active.prompt_logprobs.append(self._logprob_entry(row, seq.tokens[target_pos], k))

    def _logprob_entry(
        self, row: npt.NDArray[np.floating[Any]], token: int, k: int
    ) -> TokenLogprob:
        top: list[tuple[int, str, list[int], float]] = []
        if k > 0:
            ids = np.argpartition(row, -k)[-k:]
            ids = ids[np.argsort(row[ids])[::-1]]
            top = [
                (int(t), self._text(int(t)), list(self.backend.piece(int(t))), float(row[t]))
                for t in ids
            ]
        return TokenLogprob(
            token, self._text(token), list(self.backend.piece(token)), float(row[token]), top
        )

    def _text(self, token: int) -> str:
        return self.backend.piece(token).decode("utf-8", "replace")

    def _advance(
        self,
        rid: str,
        token: int | None,
        at_length: bool,
        logprobs: dict[str, TokenLogprob],
    ) -> TokenEvent | None:
        active = self._active.get(rid)
        if active is None:
            return None
        text = ""
        finish: FinishReason | None = None
        token_ids: list[int] = []
        if token is not None:
            if self.backend.is_eog(token) and not active.req.ignore_eos:
                finish = FinishReason.STOP
            else:
                active.completion_tokens += 1
                token_ids.append(token)
                text, hit_stop = active.stops.feed(active.decoder.feed(self.backend.piece(token)))
                if hit_stop:
                    finish = FinishReason.STOP
        if finish is None and at_length:
            finish = FinishReason.LENGTH
        if finish is not None:
            if finish is not FinishReason.STOP or not active.stops.stopped:
                tail, _ = active.stops.feed(active.decoder.flush())
                text += tail + active.stops.flush()
            lp = [logprobs[rid]] if rid in logprobs and token_ids else None
            event = self._final_event(active, finish, text, token_ids, lp)
            if token is not None and not token_ids and rid in logprobs:
                event.stop_logprob = logprobs[rid]  # the end-of-generation token's
            self.scheduler.finish(rid)
            self._close(rid)
            return event
        event = TokenEvent(
            request_id=rid,
            text=text,
            token_ids=token_ids,
            logprobs=[logprobs[rid]] if rid in logprobs else None,
            completion_tokens=active.completion_tokens,
            prompt_tokens=len(active.prompt_ids),
        )
        self._attach_once(active, event)
        return event

    def _final_event(
        self,
        active: ActiveRequest,
        finish: FinishReason,
        text: str,
        token_ids: list[int] | None = None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> TokenEvent:
        event = TokenEvent(
            request_id=active.req.request_id,
            text=text,
            token_ids=token_ids or [],
            logprobs=logprobs,
            finish_reason=finish,
            prompt_tokens=len(active.prompt_ids),
            completion_tokens=active.completion_tokens,
        )
        self._attach_once(active, event)
        return event

    def _attach_once(self, active: ActiveRequest, event: TokenEvent) -> None:
        if not active.queue_time_sent:
            event.queue_time = active.queue_time
            event.cached_tokens = active.cached_tokens
            event.prompt_logprobs = active.prompt_logprobs
            active.queue_time_sent = True

    def _fail_plan(self, plan: StepPlan, message: str) -> None:
        events = []
        for work in plan.work:
            active = self._active.get(work.request_id)
            if active is None:
                continue
            self.scheduler.finish(work.request_id)
            event = self._final_event(active, FinishReason.ABORT, "")
            event.error = InternalError(message)
            events.append(event)
            self._close(work.request_id)
        self.emit(events, self.stats())

    def _close(self, rid: str) -> None:
        active = self._active.pop(rid, None)
        if active is not None:
            self._free_sampler(active)

    def _free_sampler(self, active: ActiveRequest) -> None:
        if active.sampler is not None:
            self.backend.free_sampler(active.sampler)
            active.sampler = None
