"""The autoscaling policy: one pure function from what a deployment measured at a tick to the
replicas it should have, as Ray Serve's ``autoscaling_policy`` is (context in; desired replicas
and the policy's new state out). No clock, no I/O: the control loop
(``controller/autoscaler.py``) feeds it every tick, on any cluster kind, and tests drive it
tick by tick.

The rules, in order:

1. **Bounds.** A deployment below ``min_replicas`` or above ``max_replicas`` (its config just
   changed) goes there at once.
2. **From zero.** At zero replicas, any request (held while a replica starts) brings replicas
   at once, as many as the ongoing requests ask for: a held request must not wait for a delay.
3. **Load.** Ongoing requests (running + queued at the replicas, plus held ones) are averaged
   over ``look_back_period_s``; the replicas wanted are
   ``ceil(current * (1 + (average / (target_ongoing_requests * current) - 1) * factor))``, with
   ``upscaling_factor`` or ``downscaling_factor`` as the factor (1 by default), within the
   bounds. Rounding up keeps a replica until the others can take its share, which with the
   delays keeps a load near a boundary from flapping. Zero is wanted only when nothing was
   ongoing for the whole look-back period.
4. **Waiting time.** With ``max_queue_wait_s``, a request that has waited longer than that for
   its first token asks for one more replica than the load does (not while a replica is
   starting: it will take the waiting requests), and forbids scaling down.
5. **Room.** While replicas wait for room in the resource pool (pending), more are not asked
   for: they would only wait too.
6. **Delays.** A change must be wanted at every tick for ``upscale_delay_s`` (more) or
   ``downscale_delay_s`` (fewer; ``downscale_to_zero_delay_s`` for the last one) before it is
   decided; a tick that wants no change, or the opposite one, starts the wait again. After a
   decision the next change waits its full delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from lmaas.config_autoscaling import AutoscalingConfig

Direction = Literal["up", "down", "none"]


@dataclass(frozen=True, slots=True)
class Signals:
    """A deployment's load at one tick, as its router sees it."""

    ongoing: int  # requests at its replicas (running or queued there) plus those held
    queued: int = 0  # of those, the ones waiting for a slot (queued at a replica, or held)
    oldest_wait_s: float = 0.0  # the longest any ongoing request has waited for its first token
    held: int = 0  # requests waiting for a replica to become ready (scale from zero)


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy carries from one tick to the next."""

    samples: tuple[tuple[float, int], ...] = ()  # (time, ongoing) within the look-back period
    up_since: float | None = None  # since when more replicas are wanted, every tick
    down_since: float | None = None  # since when fewer replicas are wanted, every tick
    wanted: int | None = None  # what the load asked for at the last tick, before the delays
    average: float = 0.0  # ongoing requests averaged over the look-back period (last tick)
    reason: str = ""  # why the last tick decided what it did


@dataclass(frozen=True, slots=True)
class AutoscalingContext:
    config: AutoscalingConfig
    now: float  # seconds, any monotonic origin
    current_replicas: int  # replicas the deployment has (starting and pending ones included)
    signals: Signals
    state: PolicyState = PolicyState()
    pending_replicas: int = 0  # of those, the ones waiting for room in the resource pool
    starting_replicas: int = 0  # of those, the ones placed and not ready yet


def direction(current: int, desired: int) -> Direction:
    return "up" if desired > current else "down" if desired < current else "none"


def autoscaling_policy(ctx: AutoscalingContext) -> tuple[int, PolicyState]:
    """The replicas ``ctx``'s deployment should have, and the state for the next tick (whose
    ``reason`` says why)."""
    cfg, now, current, sig = ctx.config, ctx.now, ctx.current_replicas, ctx.signals
    horizon = now - cfg.look_back_period_s
    kept = [s for s in ctx.state.samples if s[0] > horizon]
    samples = (*kept, (now, sig.ongoing))
    average = sum(n for _, n in samples) / len(samples)
    state = replace(ctx.state, samples=samples, average=average)
    load = f"{average:.2f} ongoing requests on average over {cfg.look_back_period_s:g} s"

    bounded = cfg.clamp(current)
    if bounded != current:
        which = "min_replicas" if bounded > current else "max_replicas"
        return _decided(state, bounded, f"{which} is {bounded}")
    if current == 0:
        if sig.ongoing == 0:
            return 0, replace(state, up_since=None, down_since=None, wanted=0, reason="idle")
        wanted = cfg.clamp(max(1, math.ceil(sig.ongoing / cfg.target_ongoing_requests)))
        return _decided(
            state, wanted, f"{sig.ongoing} requests arrived at zero replicas ({sig.held} held)"
        )

    wanted, why = _wanted(cfg, current, average, sig, load, waits=not ctx.starting_replicas)
    if wanted > current and ctx.pending_replicas:
        wanted = current
        why = f"{ctx.pending_replicas} replicas wait for room in the resource pool; {load}"
    state = replace(state, wanted=wanted)
    if wanted == current:
        return current, replace(state, up_since=None, down_since=None, reason=why)
    if wanted > current:
        since = now if state.up_since is None else state.up_since
        state = replace(state, up_since=since, down_since=None)
        delay, name = cfg.upscale_delay_s, "upscale_delay_s"
    else:
        since = now if state.down_since is None else state.down_since
        state = replace(state, down_since=since, up_since=None)
        delay, name = cfg.downscale_delay_s, "downscale_delay_s"
        if wanted == 0 and cfg.downscale_to_zero_delay_s is not None:
            delay, name = cfg.downscale_to_zero_delay_s, "downscale_to_zero_delay_s"
    waited = now - since
    if waited + 1e-9 < delay:
        return current, replace(
            state, reason=f"wants {wanted} for {waited:.1f} of {delay:g} s ({name}): {why}"
        )
    return _decided(state, wanted, f"{why}; wanted for {waited:.1f} s ({name} {delay:g} s)")


def _wanted(
    cfg: AutoscalingConfig, current: int, average: float, sig: Signals, load: str, *, waits: bool
) -> tuple[int, str]:
    """The replicas the load asks for (before room and delays), and why; a long wait adds a
    replica only when ``waits`` (no replica is starting: one that is will take the waiting
    requests), and forbids fewer either way."""
    ratio = average / (cfg.target_ongoing_requests * current)
    factor = (cfg.upscaling_factor if ratio > 1 else cfg.downscaling_factor) or 1.0
    raw = current * (1 + (ratio - 1) * factor)
    wanted = cfg.clamp(math.ceil(raw - 1e-9))
    target = f"target {cfg.target_ongoing_requests:g} per replica"
    why = f"{load}, {target}"
    limit = cfg.max_queue_wait_s
    if limit is not None and sig.oldest_wait_s > limit:
        more = cfg.clamp(max(wanted, current + 1 if waits else current))
        return more, (
            f"a request has waited {sig.oldest_wait_s:.1f} s for its first token "
            f"(max_queue_wait_s {limit:g}; {sig.queued} queued); {why}"
        )
    if wanted == 0 and average > 0:
        wanted = 1  # a factor never takes the last replica while anything is ongoing
    return wanted, why


def _decided(state: PolicyState, desired: int, reason: str) -> tuple[int, PolicyState]:
    return desired, replace(state, up_since=None, down_since=None, wanted=desired, reason=reason)
