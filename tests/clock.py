"""A clock tests move by hand: what the job store and the dispatcher take as ``clock``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class FakeClock:
    """Aware UTC datetimes that only change when :meth:`advance` is called."""

    def __init__(self, start: datetime = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now
