"""Delays between restarts of a job runner that keeps ending (the local process and the Ray
actors alike): doubling from half a second up to 30 s, and back to half a second after a run
that lasted a minute."""

from __future__ import annotations

import time
from typing import Final

FIRST: Final = 0.5
MOST: Final = 30.0
STABLE_AFTER: Final = 60.0


class RestartBackoff:
    def __init__(self) -> None:
        self._next = FIRST

    def after(self, started: float) -> float:
        """The delay before the next start, for a run that started at ``started``
        (``time.monotonic()``)."""
        if time.monotonic() - started > STABLE_AFTER:
            self._next = FIRST
        delay = self._next
        self._next = min(delay * 2, MOST)
        return delay
