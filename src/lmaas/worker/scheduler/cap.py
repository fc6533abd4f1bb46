"""The running-set cap that keeps a decode step under a latency target (pure, no clock)."""

from __future__ import annotations


class StepTimeCap:
    """How many slots may run so that a decode step stays under ``target_ms`` (none: all).

    Fed the time of each pure decode step; every ``every`` such steps it compares their moving
    average with the target: above it, one slot fewer than are running now; well under it
    (< 80 %) while the cap is what limits, one more.
    """

    def __init__(self, max_slots: int, target_ms: float | None, every: int = 8) -> None:
        self.max_slots = max_slots
        self.target = None if target_ms is None else target_ms / 1000
        self.every = every
        self.cap = max_slots
        self.average: float | None = None
        self._seen = 0

    def observe(self, seconds: float, running: int) -> int:
        if self.target is None:
            return self.cap
        a = self.average
        self.average = seconds if a is None else 0.8 * a + 0.2 * seconds
        self._seen += 1
        if self._seen % self.every:
            return self.cap
        if self.average > self.target and running > 1:
            self.cap = max(1, min(self.cap, running) - 1)
        elif self.average < 0.8 * self.target and running >= self.cap:
            self.cap = min(self.max_slots, self.cap + 1)
        return self.cap
