"""Admission of generation requests: accept only work that can finish in time.

A model runs ``capacity`` sequences at once (its replicas' slots); more wait in the workers'
queues. Admitting a request reserves its sequences here at once (before any ``await``), so
concurrent requests can never overshoot the bounds, and the reservation is released when the
request ends, however it ends.

Bounds, checked in this order (429 with ``Retry-After`` when one is exceeded):

1. **Count**: reserved sequences + the newcomer's <= capacity + ``limits.max_queue``.
2. **Time**: from the tokens each reserved sequence is still expected to generate and the rate
   one running sequence generates at (measured by the workers, ``engine/rate.py``), the
   newcomer's start and finish times are estimated (``estimate``). With a client deadline
   (the ``X-Lmaas-Deadline`` header), a request that would not finish within it is refused;
   without one, a request that would wait more than ``limits.max_queue_wait`` to start is,
   or more than the read timeout the official OpenAI SDKs send (``X-Stainless-Read-Timeout``:
   for a stream, the time to its first byte; otherwise the whole answer's). The
   ``Retry-After`` is how much later the same request would fit, as estimated. The error's
   ``code`` (``queue_full``, ``deadline``, ``queue_wait``) says which bound refused it.

Until a model's rate has been measured, only the count applies.

A request that finds a free slot and nobody waiting is always admitted: only running requests
keep the estimates honest. Estimates are calibrated by outcomes: every request that ran to its
end (or outlived its estimate) records its actual / estimated time, and estimates are
multiplied by the 90th percentile of the last 32 such ratios. A request's fixed cost in its
slot (admission into the batch, prefill, sampler set-up: its time between the worker admitting
it and its end, beyond its tokens at the measured rate) is learnt, as the median over recent
requests, and added to every request that has not started. What the model still leaves out
(the gateway, HTTP, a machine shared with other work) is so learnt, with the margin that makes
about nine in ten accepted requests finish within their estimate.

A sequence is expected to generate ``max_tokens`` scaled by how much of ``max_tokens`` the
model's recent requests actually used (a moving average of that fill ratio, so requests that
stop early at an end-of-text token are not counted at their full budget), or, without
``max_tokens``, the moving average length of recent such requests.

The estimate follows the workers' scheduler: the oldest reserved sequences run, in slots that
free up as they finish; of the waiting ones, the newcomer's own tenant's are ahead of it, and of
every other tenant about as many as the fair queue admits between two of its own (its share
by weight), so a key flooding a model makes the flood wait, not a newcomer of another key.
Sequences of a lower priority class (a batch's lines, for an interactive request) are never
ahead of it: the worker admits it first, and preempts one of them for its slot.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lmaas.config import Limits
from lmaas.engine.client import EngineClient
from lmaas.errors import InvalidRequestError, OverloadedError, ServiceUnavailableError

DEADLINE_HEADER = "x-lmaas-deadline"
SDK_TIMEOUT_HEADER = "x-stainless-read-timeout"

_DEFAULT_LENGTH = 256.0  # expected tokens of a request without max_tokens, before any is seen
log = logging.getLogger(__name__)

_SMOOTHING = 0.1
_RATIO_WINDOW = 32  # recent requests whose actual / estimated time calibrates estimates
_MIN_RATIOS = 8
_MIN_ESTIMATE = 0.05  # s; shorter estimates are all noise


@dataclass(frozen=True, slots=True)
class Deadline:
    """How long a client waits: for the whole answer, or (``whole`` false) for its first byte."""

    seconds: float
    whole: bool = True


def client_deadline(headers: Mapping[str, str], *, stream: bool) -> Deadline | None:
    """The client's deadline from its headers (``None``: it said nothing).

    ``X-Lmaas-Deadline`` (seconds for the whole answer) wins; otherwise the read timeout the
    official OpenAI SDKs send (``X-Stainless-Read-Timeout``) bounds the time to the first byte,
    which for a body that is not streamed is the whole answer. A malformed explicit deadline is
    a 400; a malformed SDK header is ignored."""
    raw = headers.get(DEADLINE_HEADER)
    if raw is not None:
        value = _seconds(raw)
        if value is None:
            raise InvalidRequestError(
                "the X-Lmaas-Deadline header must be a positive number of seconds, "
                f"not {raw[:40]!r}",
                param="X-Lmaas-Deadline",
            )
        return Deadline(value)
    raw = headers.get(SDK_TIMEOUT_HEADER)
    value = _seconds(raw) if raw is not None else None
    return None if value is None else Deadline(value, whole=not stream)


def _seconds(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 < value <= 86_400 else None


def estimate(
    running: list[float], waiting: list[float], own: float, slots: int, per_seq_rate: float
) -> tuple[float, float]:
    """Seconds until a newcomer starts and finishes.

    ``running``/``waiting``: the tokens each sequence ahead of it still has to generate (those
    running first, in order); ``slots`` run at once, each at ``per_seq_rate`` tokens/s; a slot
    goes to the next waiting sequence when its sequence ends."""
    slots = max(slots, 1)
    levels = list(running[:slots])  # tokens each busy slot has left, in "per-slot" time
    heapq.heapify(levels)
    queue = running[slots:] + waiting
    for tokens in queue:
        free_at = heapq.heappop(levels) if len(levels) >= slots else 0.0
        heapq.heappush(levels, free_at + tokens)
    start = heapq.heappop(levels) if len(levels) >= slots else 0.0
    return start / per_seq_rate, (start + own) / per_seq_rate


@dataclass(eq=False)
class Ticket:
    """One admitted request's reservation; ``release`` it when the request ends."""

    model: str
    sequences: int
    expected: float  # tokens each sequence is expected to generate
    max_tokens: int | None
    tenant: str | None
    weight: float
    owner: EngineLoad | None = None
    rank: int = 0  # priority class, 0 (interactive) first
    produced: int = 0  # tokens generated so far, all sequences together
    released: bool = False
    admitted_at: float = 0.0  # the admission's clock
    estimate: float | None = None  # seconds to its end, as estimated when admitted (raw)
    rate: float | None = None  # the per-sequence token rate it was estimated with
    queue_time: float | None = None  # seconds it waited in the worker for a slot

    def release(self, completion_tokens: int | None = None) -> None:
        """End the reservation (idempotent); ``completion_tokens`` (all sequences) teaches the
        model's expected lengths when the request ran to its end."""
        if self.released:
            return
        self.released = True
        if self.owner is not None:
            self.owner.done(self, completion_tokens)

    @property
    def remaining(self) -> float:
        """Tokens each of its sequences still has to generate, as expected."""
        return max(self.expected - self.produced / self.sequences, 1.0)


@dataclass
class EngineLoad:
    """The reservations on one model and what its past requests taught."""

    clock: Callable[[], float] = time.monotonic
    tickets: list[Ticket] = field(default_factory=list)  # in order of admission
    reserved: int = 0  # sequences
    fill: float | None = None  # completion tokens / max_tokens, moving average
    length: float | None = None  # completion tokens of requests without max_tokens
    # seconds recent requests cost their slot beyond their tokens at the measured rate
    # (admission into the batch, prefill, sampler set-up); ``overhead`` is their median
    overheads: deque[float] = field(default_factory=lambda: deque(maxlen=_RATIO_WINDOW))
    # actual / estimated time of recent requests (see ``calibration``)
    ratios: deque[float] = field(default_factory=lambda: deque(maxlen=_RATIO_WINDOW))

    @property
    def overhead(self) -> float:
        if not self.overheads:
            return 0.0
        ordered = sorted(self.overheads)
        return ordered[len(ordered) // 2]

    @property
    def calibration(self) -> float:
        """What raw estimates are multiplied by: the 90th percentile of actual / estimated
        time over the last requests, so that about nine in ten finish within their estimate
        (1 until enough have been seen)."""
        if len(self.ratios) < _MIN_RATIOS:
            return 1.0
        ordered = sorted(self.ratios)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]

    def expected(self, max_tokens: int | None) -> float:
        if max_tokens is None:
            return self.length or _DEFAULT_LENGTH
        if self.fill is None:
            return float(max_tokens)
        return max(1.0, max_tokens * min(1.0, self.fill * 1.25 + 0.05))

    def done(self, ticket: Ticket, completion_tokens: int | None) -> None:
        self.tickets.remove(ticket)
        self.reserved -= ticket.sequences
        self._learn_time(ticket, completion_tokens is not None)
        if completion_tokens is None:
            return
        self._learn_overhead(ticket, completion_tokens)
        per_seq = completion_tokens / ticket.sequences
        if ticket.max_tokens:
            x = min(per_seq / ticket.max_tokens, 1.0)
            self.fill = x if self.fill is None else self.fill + _SMOOTHING * (x - self.fill)
        else:
            y = self.length
            self.length = per_seq if y is None else y + _SMOOTHING * (per_seq - y)

    def _learn_overhead(self, ticket: Ticket, completion_tokens: int) -> None:
        """Its time in a slot (from the worker admitting it to its end) beyond its tokens."""
        if ticket.rate is None or ticket.queue_time is None:
            return
        in_slot = self.clock() - ticket.admitted_at - ticket.queue_time
        self.overheads.append(max(in_slot - completion_tokens / ticket.sequences / ticket.rate, 0))

    def _learn_time(self, ticket: Ticket, complete: bool) -> None:
        """A finished request's actual / estimated time; one cut short teaches only when it
        had already outlived its estimate (its ratio is then a lower bound)."""
        if ticket.estimate is None or ticket.estimate < _MIN_ESTIMATE:
            return
        ratio = (self.clock() - ticket.admitted_at) / ticket.estimate
        if complete or ratio > 1.0:
            self.ratios.append(min(max(ratio, 0.25), 8.0))
            log.debug("estimated %.2fs, took %.2fs", ticket.estimate, ratio * ticket.estimate)

    def ahead_of(
        self, tenant: str | None, weight: float, slots: int, extra: float = 0.0, rank: int = 0
    ) -> tuple[list[float], list[float]]:
        """Remaining tokens of the sequences that run before a newcomer of ``tenant`` and
        class ``rank`` (plus ``extra`` for each one that has produced nothing yet).

        A running sequence of a lower class gives its slot up to the newcomer (the worker
        preempts it), and a waiting one of a lower class is admitted after it: neither is
        ahead of it. A waiting one of a higher class always is."""
        per_seq = [
            (t, t.remaining + (0.0 if t.produced else extra))
            for t in self.tickets
            for _ in range(t.sequences)
        ]
        running = [r for t, r in per_seq[:slots] if t.rank <= rank]
        queued = [(t, r) for t, r in per_seq[slots:] if t.rank <= rank]
        own_waiting = sum(1 for t, _ in queued if t.tenant == tenant and t.rank == rank)
        allowed: dict[str | None, int] = {}
        waiting: list[float] = []
        for t, r in queued:
            if t.tenant != tenant and t.rank == rank:
                quota = allowed.setdefault(
                    t.tenant, math.ceil((own_waiting + 1) * t.weight / weight)
                )
                if quota <= 0:
                    continue
                allowed[t.tenant] = quota - 1
            waiting.append(r)
        return running, waiting


class Admission:
    """Reservations per model name, and the decision to admit."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._loads: dict[str, EngineLoad] = {}

    def load(self, model: str) -> EngineLoad:
        load = self._loads.get(model)
        if load is None:
            load = self._loads[model] = EngineLoad(self.clock)
        return load

    def admit(
        self,
        engine: EngineClient,
        *,
        sequences: int,
        max_tokens: int | None,
        tenant: str | None = None,
        weight: float = 1.0,
        rank: int = 0,
        deadline: Deadline | None = None,
    ) -> Ticket:
        """Reserve ``sequences`` on ``engine`` or raise (503 not ready, 429 over a bound)."""
        capacity = engine.capacity
        if capacity == 0:
            raise ServiceUnavailableError(
                f"model '{engine.name}' is not ready (its worker is starting or restarting); "
                "retry shortly"
            )
        load = self.load(engine.name)
        if load.reserved + sequences > capacity + self.limits.max_queue:
            raise OverloadedError(
                f"model '{engine.name}' is at capacity ({load.reserved} sequences in flight); "
                "retry after the delay in Retry-After",
                retry_after=1,
                code="queue_full",
            )
        expected = load.expected(max_tokens)
        rate = engine.sequence_rate
        estimate = None
        if rate is not None and rate > 0:
            estimate = self._check_time(
                engine.name, load, capacity, rate, expected, (tenant, weight, rank), deadline
            )
        ticket = Ticket(engine.name, sequences, expected, max_tokens, tenant, weight, load, rank)
        ticket.admitted_at, ticket.estimate, ticket.rate = self.clock(), estimate, rate
        load.tickets.append(ticket)
        load.reserved += sequences
        return ticket

    def _check_time(
        self,
        model: str,
        load: EngineLoad,
        capacity: int,
        rate: float,
        expected: float,
        who: tuple[str | None, float, int],
        deadline: Deadline | None,
    ) -> float:
        """Raise when the request would miss a bound; else its raw estimated finish (s).

        ``who``: the newcomer's tenant, weight and priority class."""
        tenant, weight, rank = who
        extra = load.overhead * rate  # a request's overhead, in tokens
        running, waiting = load.ahead_of(tenant, weight, capacity, extra, rank)
        raw_start, raw_finish = estimate(running, waiting, expected + extra, capacity, rate)
        k = load.calibration
        start, finish = raw_start * k, raw_finish * k
        if raw_start == 0:
            # A free slot and nobody waiting: it starts at once. An estimate that says it will
            # still be late is not trusted over running it (and only running requests keep
            # the estimates honest).
            return raw_finish
        log.debug(
            "%s: %d ahead (%d running), rate %.1f tok/s/seq, overhead %.3fs, x%.2f: "
            "start %.2fs, finish %.2fs",
            model,
            len(running) + len(waiting),
            len(running),
            rate,
            load.overhead,
            k,
            start,
            finish,
        )
        if deadline is not None and deadline.whole:
            if finish > deadline.seconds:
                raise OverloadedError(
                    f"model '{model}' is too busy to answer within the client's deadline of "
                    f"{deadline.seconds:g} s (estimated {finish:.1f} s); retry after the delay "
                    "in Retry-After",
                    retry_after=max(1, math.ceil(finish - deadline.seconds)),
                    code="deadline",
                )
            return raw_finish
        limit = self.limits.max_queue_wait
        if deadline is not None:
            limit = min(limit, deadline.seconds)
        if start > limit:
            raise OverloadedError(
                f"model '{model}' is too busy: a new request would wait about {start:.0f} s "
                f"to start (the limit is {limit:g} s); retry after the delay in Retry-After",
                retry_after=max(1, math.ceil(start - limit)),
                code="queue_wait",
            )
        return raw_finish
