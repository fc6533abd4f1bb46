"""The rate at which a worker generates tokens while it is busy, from its running total.

Every frame a worker sends carries ``gen``, the tokens it has sampled since it started (every
beam's included). The rate over an interval is the growth of that total over the interval's
length; intervals are at least ``min_interval`` long so that one step's jitter does not swing
it, and an interval longer than ``max_gap`` is dropped (the worker sends frames at every step
while it works, so a long gap means it was idle part of the time and would understate the
rate). A moving average smooths what is left.

Tokens per running sequence divide the growth by the sequence-seconds of the interval (the
running count each frame reported, times the time to the next frame). The admission
estimates of ``gateway/serving/admission.py`` read it: at overload the worker
runs a full batch, which is the rate a newcomer's wait depends on.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenRate:
    """Tokens per second one running sequence gets, and all of them together, while busy."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        min_interval: float = 0.5,
        max_gap: float = 2.0,
        smoothing: float = 0.3,
    ) -> None:
        self.clock = clock
        self.min_interval = min_interval
        self.max_gap = max_gap
        self.smoothing = smoothing
        self.per_sequence: float | None = None  # tokens/s of one running sequence
        self.total: float | None = None  # tokens/s of all of them
        self._start: float | None = None  # the interval being measured
        self._start_tokens = 0
        self._busy = 0.0  # sequence-seconds in the interval so far
        self._last: float | None = None  # the previous frame
        self._last_running = 0

    def update(self, generated: int, running: int) -> None:
        """A frame's running total of generated tokens and its running sequences."""
        now = self.clock()
        last = self._last
        if self._start is None or last is None or generated < self._start_tokens:
            self._restart(now, generated, running)
            return
        gap = now - last
        if gap > self.max_gap:  # idle part of the time: measure afresh from here
            self._restart(now, generated, running)
            return
        self._busy += self._last_running * gap
        self._last, self._last_running = now, running
        elapsed = now - self._start
        if elapsed < self.min_interval:
            return
        grown = generated - self._start_tokens
        busy = self._busy
        self._restart(now, generated, running)
        if grown <= 0 or busy <= 0:
            return
        self.per_sequence = self._smooth(self.per_sequence, grown / busy)
        self.total = self._smooth(self.total, grown / elapsed)

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.smoothing * (new - old)

    def _restart(self, now: float, generated: int, running: int) -> None:
        self._start, self._start_tokens, self._busy = now, generated, 0.0
        self._last, self._last_running = now, running
