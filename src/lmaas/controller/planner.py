"""The capacity planner: how many replicas a target load needs, from a measured profile.

A ``Profile`` is what ``lmaas profile`` measured of one replica of a model version on some
hardware: its prefill rate, its aggregate decode rate at several batch sizes (continuous
batching: ``b`` streams decoding together), the fixed time every request costs on top (HTTP,
template, tokenizing, sampling), the threads it ran with, and its memory. ``predict`` turns a
profile, a ``Load`` and a number of replicas into expected throughput, latency and utilisation;
``plan`` tries replica counts until one meets the load's objectives on a ``Machine``. Pure
arithmetic, no I/O: the planner's tests check it against hand-computed cases and
``bench/plan.py`` against measured runs.

The model of one replica (all times in seconds):

* Rates change with the CPU threads a replica gets, prefill and decode each its own way
  (threads wait for each other at every operation's end, and decode also waits on memory).
  The profile's tables are measured at ``profile.threads``; it may carry tables measured at
  other thread counts too (``at_threads``). Between two measured counts a phase's rate (at the
  request's prompt length; at the batch size) goes as the power of the threads fitted through
  the two; past the ends, the nearest pair's power goes on (always kept within [0, 1.5]: a
  measurement past those was disturbed by other load); with one
  measured count, ``prefill_thread_scaling`` and ``decode_thread_scaling``. Replicas asking
  for more threads than the machine has cores share them: rates scale by ``cores / (replicas
  x threads)`` too.
* A request costs the engine ``P`` for its prompt, interpolated in the measured prefill times
  (``prefill_seconds``: prompt tokens -> seconds, less the overhead; attention makes long
  prompts cost more per token, so a single rate would not do), and ``D(b) = output /
  decode(b)`` for its output when ``b`` streams decode together (a step makes ``b`` tokens in
  ``b / decode(b)``; each stream's share is ``1 / decode(b)`` per token). With ``lam`` requests
  per second per replica the engine is busy ``rho = lam x (P + D(b))`` of the time.
* A token of a stream takes ``itl = b / decode(b)``, stretched by the prefills that share the
  steps: ``itl / (1 - lam x P)``.
* Work under load runs slower than the profile's prefill and decode measured apart (each the
  fastest of its repetitions, on an otherwise idle replica): steps mix prefills and decodes,
  and the machine's speed varies. A saturated run of mixed work in the profile gives the factor
  ``k`` by which ``P + D(b)`` underestimates a request's engine time under load
  (``Profile.interference``); the busy time is ``k x (P + D(b))``, and a prompt's prefill
  takes ``k x P``.
* Continuous batching: a prompt is prefilled in the next step, alongside the running streams'
  tokens, so it waits for the prompts ahead of it, not for whole requests. Its service is
  ``S = k x P + itl``, about the same for every prompt of the load's length: prompts queue as
  in an M/D/1 queue of load ``rho_p = lam x S``, whose waiting time exceeds ``t`` with
  probability about ``rho_p x exp(-x t / S)``, ``x`` the root of ``rho_p (e^x - 1) = x``
  (an M/M/1 queue's exponential services would give ``x = 1 - rho_p``: a tail several times
  too long at light loads). When every sequence slot is taken (``b`` at the engine's limit) a
  request also waits for a slot, as in an M/M/1 queue of whole requests (load ``rho``, service
  ``k x (P + D(b))``: outputs vary). TTFT at quantile ``q`` is ``overhead + wait_q + S``.
* The concurrency ``b`` is what Little's law gives for that latency: ``b = lam x (ttft +
  output x itl)``, found by fixed-point iteration (capped by the engine's sequence limit).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Load", "Machine", "Plan", "Prediction", "Profile", "ThreadRates", "plan", "predict"]

TARGET_UTILISATION = 0.8  # what a plan leaves for bursts
_ITERATIONS = 60
_MAX_SCALING = 1.5  # the steepest power of the threads a rate goes with


@dataclass(frozen=True, slots=True)
class ThreadRates:
    """What the same replica measured at another thread count (the profile's tables at
    ``Profile.threads`` are the main ones)."""

    prefill_seconds: Mapping[int, float]  # prompt tokens -> seconds, overhead included
    decode_tokens_per_s: Mapping[int, float]  # batch size -> aggregate output tokens/s

    def __post_init__(self) -> None:
        if len(self.prefill_seconds) < 1 or not self.decode_tokens_per_s:
            raise ValueError("rates at other thread counts need prefill times and decode rates")
        if any(n < 1 or t <= 0 for n, t in self.prefill_seconds.items()):
            raise ValueError("prefill times need prompt lengths >= 1 and positive times")
        if any(b < 1 or r <= 0 for b, r in self.decode_tokens_per_s.items()):
            raise ValueError("decode rates need batch sizes >= 1 and positive rates")


def _interpolated(table: Mapping[int, float], x: float) -> float:
    """Piecewise linear in ``table`` (two points or more), extended past its ends along its
    first and last segments."""
    pairs = list(itertools.pairwise(sorted(table.items())))
    (x0, y0), (x1, y1) = next(((a, b) for a, b in pairs if x <= b[0]), pairs[-1])
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _rate_at_threads(
    rates: Mapping[int, float], threads: float, exponent: float, own: int
) -> float:
    """A rate at ``threads`` from the rates measured at some thread counts (``own``: the
    profile's): the power of the threads through the two measured counts around it (the
    nearest two past the ends), kept within [0, 1.5] (more threads are neither slower nor
    faster than that: a measurement that says so was disturbed), from the one of the two
    nearer ``own``, inside the two and past them alike (so the rate has no jump at the
    outermost count); ``exponent`` from the one count when only one was measured."""
    points = sorted(rates.items())
    if len(points) == 1:
        ((t0, r0),) = points
        return r0 * float((threads / t0) ** exponent)
    pairs = list(itertools.pairwise(points))
    (t0, r0), (t1, r1) = next(((a, b) for a, b in pairs if threads <= b[0]), pairs[-1])
    power = min(_MAX_SCALING, max(0.0, math.log(r1 / r0) / math.log(t1 / t0)))
    base_t, base_r = (t1, r1) if abs(t1 - own) < abs(t0 - own) else (t0, r0)
    return base_r * float((threads / base_t) ** power)


@dataclass(frozen=True, slots=True)
class Profile:
    """One replica of a model version as ``lmaas profile`` measured it."""

    threads: int  # CPU threads the measured replica ran with
    prefill_tokens_per_s: float  # the longest measured prompt's tokens over its engine time
    decode_tokens_per_s: Mapping[int, float]  # batch size -> aggregate output tokens/s
    overhead_s: float = 0.0  # per request, on top of the engine's work
    memory_bytes: int = 0  # one replica's: runtime, weights and KV cache
    max_num_seqs: int = 32
    # prompt tokens -> seconds of a request with one output token, overhead included
    prefill_seconds: Mapping[int, float] = field(default_factory=dict)
    # The same measured at other thread counts (say 1): each phase's scaling with threads.
    at_threads: Mapping[int, ThreadRates] = field(default_factory=dict)
    # Without other thread counts, prefill and decode rates go as threads ** these
    prefill_thread_scaling: float = 1.0
    decode_thread_scaling: float = 1.0
    # A saturated run of mixed work (streams sending prompt/output-token requests back to
    # back): seconds per request it took, which the costs above underestimate (prefills and
    # decodes share steps less efficiently than each alone); 0: not measured.
    mixed_prompt_tokens: int = 0
    mixed_output_tokens: int = 0
    mixed_streams: int = 0
    mixed_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.threads < 1 or self.prefill_tokens_per_s <= 0 or not self.decode_tokens_per_s:
            raise ValueError("a profile needs threads >= 1, a prefill rate and decode rates")
        if any(b < 1 or r <= 0 for b, r in self.decode_tokens_per_s.items()):
            raise ValueError("decode rates need batch sizes >= 1 and positive rates")
        if any(n < 1 or t <= 0 for n, t in self.prefill_seconds.items()):
            raise ValueError("prefill times need prompt lengths >= 1 and positive times")
        exponents = (self.prefill_thread_scaling, self.decode_thread_scaling)
        if not all(0 < e <= _MAX_SCALING for e in exponents):
            raise ValueError(f"thread scaling exponents must be in (0, {_MAX_SCALING}]")
        if any(t < 1 or t == self.threads for t in self.at_threads):
            raise ValueError("other thread counts must be >= 1 and not the profile's own")

    def interference(self) -> float:
        """How much more engine time a request takes in a saturated mix than its prefill and
        decode measured apart say (1 without a mixed run; kept within [0.5, 3])."""
        if self.mixed_seconds <= 0 or self.mixed_streams < 1 or self.mixed_prompt_tokens < 1:
            return 1.0
        apart = self.prefill_time(self.mixed_prompt_tokens) + self.mixed_output_tokens / (
            self.decode_at(self.mixed_streams)
        )
        return min(3.0, max(0.5, self.mixed_seconds / apart))

    def prefill_time(self, tokens: int, threads: int | None = None) -> float:
        """Engine seconds to prefill ``tokens`` (overhead excluded) with ``threads`` threads
        (``self.threads`` by default): interpolated in ``prefill_seconds``, extended past its
        ends along its first and last segments (the single rate without a table); at other
        thread counts, scaled as the module's docstring says."""
        if len(self.prefill_seconds) < 2:
            here = tokens / self.prefill_tokens_per_s
        else:
            here = self._table_time(self.prefill_seconds, tokens)
        if threads is None or threads == self.threads:
            return here
        speeds = {self.threads: 1.0}
        for t, other in self.at_threads.items():
            speeds[t] = here / self._table_time(other.prefill_seconds, tokens)
        return here / _rate_at_threads(speeds, threads, self.prefill_thread_scaling, self.threads)

    def _table_time(self, table: Mapping[int, float], tokens: int) -> float:
        """Engine seconds for ``tokens`` in a table of prompt tokens -> request seconds (one
        length: in proportion to it)."""
        engine = {n: t - self.overhead_s for n, t in table.items()}
        if len(engine) == 1:
            ((n, t),) = engine.items()
            return max(1e-6, t * tokens / n)
        return max(1e-6, _interpolated(engine, tokens))

    def decode_at(self, batch: float, threads: int | None = None) -> float:
        """Aggregate decode tokens/s with ``batch`` streams and ``threads`` threads
        (``self.threads`` by default): piecewise linear between the measured batch sizes, flat
        beyond the largest, proportional below the smallest; at other thread counts, scaled as
        the module's docstring says."""
        here = _decode_table_rate(self.decode_tokens_per_s, batch)
        if threads is None or threads == self.threads:
            return here
        rates = {self.threads: here}
        for t, other in self.at_threads.items():
            rates[t] = _decode_table_rate(other.decode_tokens_per_s, batch)
        return _rate_at_threads(rates, threads, self.decode_thread_scaling, self.threads)


def _decode_table_rate(table: Mapping[int, float], batch: float) -> float:
    points = sorted(table.items())
    if batch <= points[0][0]:
        b0, r0 = points[0]
        return r0 * max(batch, 1.0) / b0 if b0 > 1 else r0
    if batch >= points[-1][0]:
        return points[-1][1]
    return _interpolated(table, batch)


@dataclass(frozen=True, slots=True)
class Load:
    """The traffic to plan for, and what it must get."""

    requests_per_s: float
    prompt_tokens: int
    output_tokens: int
    ttft_p99_s: float | None = None
    latency_p99_s: float | None = None
    utilisation: float = TARGET_UTILISATION

    def __post_init__(self) -> None:
        if self.requests_per_s <= 0 or self.prompt_tokens < 1 or self.output_tokens < 1:
            raise ValueError("a load needs requests_per_s > 0, prompt and output tokens >= 1")
        if not 0 < self.utilisation <= 1:
            raise ValueError("utilisation must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class Machine:
    """One node: what replicas may use of it."""

    cores: int
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class Prediction:
    """What ``replicas`` replicas, each with ``threads`` threads, are expected to do."""

    replicas: int
    threads: int
    saturated: bool  # the load exceeds what they can serve: queues grow without bound
    utilisation: float  # of each replica's engine
    requests_per_s: float  # served (the load, or the maximum when saturated)
    output_tokens_per_s: float
    max_requests_per_s: float  # what they serve at most
    ttft_p50_s: float
    ttft_p99_s: float
    latency_p50_s: float
    latency_p99_s: float
    concurrency: float  # streams decoding together on each replica

    def meets(self, load: Load) -> bool:
        if self.saturated or self.utilisation > load.utilisation:
            return False
        if load.ttft_p99_s is not None and self.ttft_p99_s > load.ttft_p99_s:
            return False
        return load.latency_p99_s is None or self.latency_p99_s <= load.latency_p99_s


@dataclass(frozen=True, slots=True)
class Plan:
    """The smallest deployment that meets the load, and the candidates tried."""

    load: Load
    machine: Machine
    choice: Prediction | None  # None: no replica count meets the load on the machines allowed
    nodes: int  # machines like ``machine`` that the choice needs
    cores: int
    memory_bytes: int
    candidates: list[Prediction] = field(default_factory=list)
    reason: str = ""


def _wait_quantile(rho: float, service: float, q: float, *, steady: bool = False) -> float:
    """The ``q`` quantile of a queue's waiting time (Poisson arrivals, load ``rho``, mean
    service ``service``): exponential services (M/M/1), or with ``steady`` about the same
    every time (M/D/1, whose tail decays as :func:`_decay` says)."""
    if rho <= 0:
        return 0.0
    if rho >= 1:
        return math.inf
    tail = 1 - q
    if rho <= tail:
        return 0.0
    return service / (_decay(rho) if steady else 1 - rho) * math.log(rho / tail)


def _decay(rho: float) -> float:
    """The root ``x > 0`` of ``rho (e^x - 1) = x`` (``0 < rho < 1``): an M/D/1 queue's waiting
    time exceeds ``t`` with probability about ``rho exp(-x t / S)`` (Cramer-Lundberg; an M/M/1
    queue's ``x`` is ``1 - rho``, and near ``rho = 1`` this one is twice that)."""
    lo, hi = 0.0, 1.0
    while rho * math.expm1(hi) <= hi:
        lo, hi = hi, 2 * hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rho * math.expm1(mid) <= mid else (lo, mid)
    return (lo + hi) / 2


def _first_token_wait(
    lam: float, service: float, slots: tuple[float, float] | None, q: float
) -> float:
    """The ``q`` quantile of a prompt's wait: for the prompts ahead of it (each ``service``
    seconds, ``lam`` a second), and for a sequence slot when ``slots`` (the engine's load and
    a request's engine time) says every slot is taken."""
    wait = _wait_quantile(lam * service, service, q, steady=True)  # a prompt length's prefill
    return wait + (_wait_quantile(slots[0], slots[1], q) if slots else 0.0)


def predict(profile: Profile, load: Load, replicas: int, *, threads: int, cores: int) -> Prediction:
    """Expected behaviour of ``replicas`` replicas of ``threads`` threads on ``cores`` cores
    sharing ``load`` evenly (see the module's docstring for the model)."""
    if replicas < 1 or threads < 1 or cores < 1:
        raise ValueError("replicas, threads and cores must be >= 1")
    share = min(1.0, cores / (replicas * threads))
    lam = load.requests_per_s / replicas
    p = profile.prefill_time(load.prompt_tokens, threads) / share
    cap = float(profile.max_num_seqs)

    k = profile.interference()

    def decode(b: float) -> float:
        return profile.decode_at(b, threads) * share

    def cost(b: float) -> float:  # engine seconds per request when b streams decode
        return k * (p + load.output_tokens / decode(b))

    best = 1.0 / cost(cap)
    batch = 1.0
    itl = ttft50 = ttft99 = lat50 = lat99 = rho = 0.0
    for _ in range(_ITERATIONS):
        rho = lam * cost(batch)
        itl = batch / decode(batch)
        prefill_share = lam * k * p
        stretched = itl / (1 - prefill_share) if prefill_share < 1 else math.inf
        service = k * p + itl
        slots = (rho, cost(batch)) if batch >= cap else None
        ttft50 = profile.overhead_s + _first_token_wait(lam, service, slots, 0.5) + service
        ttft99 = profile.overhead_s + _first_token_wait(lam, service, slots, 0.99) + service
        lat50 = ttft50 + load.output_tokens * stretched
        lat99 = ttft99 + load.output_tokens * stretched
        following = min(cap, max(1.0, lam * lat50)) if math.isfinite(lat50) else cap
        if abs(following - batch) < 1e-6:
            break
        batch = following
    saturated = lam >= best or rho >= 1 or not math.isfinite(ttft99)
    served = min(load.requests_per_s, best * replicas)
    return Prediction(
        replicas=replicas,
        threads=threads,
        saturated=saturated,
        utilisation=min(rho, 1.0),
        requests_per_s=served,
        output_tokens_per_s=served * load.output_tokens,
        max_requests_per_s=best * replicas,
        ttft_p50_s=ttft50,
        ttft_p99_s=ttft99,
        latency_p50_s=lat50,
        latency_p99_s=lat99,
        concurrency=batch,
    )


def plan(profile: Profile, load: Load, machine: Machine, *, max_replicas: int = 64) -> Plan:
    """The fewest replicas that meet ``load``: first as many as fit on one ``machine`` (threads
    split between them), then replicas of ``profile.threads`` threads on more machines alike."""
    per_replica = profile.memory_bytes
    candidates: list[Prediction] = []
    fit_memory = machine.memory_bytes // per_replica if per_replica else max_replicas
    for replicas in range(1, min(machine.cores, fit_memory, max_replicas) + 1):
        threads = max(1, machine.cores // replicas)
        guess = predict(profile, load, replicas, threads=threads, cores=machine.cores)
        candidates.append(guess)
        if guess.meets(load):
            return _chosen(load, machine, guess, 1, candidates, per_replica)
    if fit_memory < 1:
        reason = (
            f"one replica needs {per_replica / 2**20:.0f} MiB of memory; a machine has "
            f"{machine.memory_bytes / 2**20:.0f} MiB"
        )
        return Plan(load, machine, None, 0, 0, 0, candidates, reason)
    threads = min(profile.threads, machine.cores)
    per_node = max(1, min(machine.cores // threads, fit_memory))
    last = None
    for replicas in range(1, max_replicas + 1):
        last = predict(profile, load, replicas, threads=threads, cores=replicas * threads)
        if last.meets(load):
            candidates.append(last)
            nodes = math.ceil(replicas / per_node)
            return _chosen(load, machine, last, nodes, candidates, per_replica)
    if last is not None and (last.saturated or last.utilisation > load.utilisation):
        candidates.append(last)
        why = (
            f"they serve at most {last.max_requests_per_s:.3g} requests/s"
            f" ({load.utilisation:.0%} of that: {last.max_requests_per_s * load.utilisation:.3g})"
        )
    else:
        why = "even a lightly loaded replica misses the TTFT/latency objectives"
    reason = f"no deployment of up to {max_replicas} replicas meets the load: {why}"
    return Plan(load, machine, None, 0, 0, 0, candidates, reason)


def _chosen(
    load: Load,
    machine: Machine,
    choice: Prediction,
    nodes: int,
    candidates: list[Prediction],
    per_replica: int,
) -> Plan:
    cores = choice.replicas * choice.threads if nodes > 1 else machine.cores
    return Plan(
        load=load,
        machine=machine,
        choice=choice,
        nodes=nodes,
        cores=cores,
        memory_bytes=choice.replicas * per_replica,
        candidates=candidates,
        reason=f"{choice.replicas} replica(s) at {choice.utilisation:.0%} utilisation meet it",
    )
