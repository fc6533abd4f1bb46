"""RecordWriter against a fake store: batching, outages, overflow, shutdown and retention."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from lmaas.records.store import RecordWriter, RequestRecord
from tests.records import T0, make_record

DEADLINE = 5.0


class FakeStore:
    """Counts writes; ``fail`` makes them raise, ``gate`` (when set) makes them wait for it."""

    def __init__(self) -> None:
        self.batches: list[list[RequestRecord]] = []
        self.attempts = 0
        self.fail = False
        self.gate: threading.Event | None = None
        self.cutoffs: list[datetime] = []

    def insert_many(self, records: Sequence[RequestRecord]) -> None:
        self.attempts += 1
        if self.gate is not None:
            assert self.gate.wait(DEADLINE)
        if self.fail:
            raise ConnectionError("database is down")
        self.batches.append(list(records))

    def delete_older_than(self, cutoff: datetime) -> int:
        self.cutoffs.append(cutoff)
        return 0

    @property
    def stored(self) -> list[RequestRecord]:
        return [record for batch in self.batches for record in batch]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (without blocking the loop) until ``condition()`` holds, failing at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.001)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


async def test_flush_writes_in_batches(store: FakeStore) -> None:
    recorder = RecordWriter(store, batch_size=200, flush_interval=60, retention_days=None)
    recorder.start()
    records = [make_record(n) for n in range(450)]
    for record in records:
        recorder.record(record)
    await recorder.flush()
    assert [len(batch) for batch in store.batches] == [200, 200, 50]
    assert store.stored == records
    assert (recorder.written, recorder.pending, recorder.dropped) == (450, 0, 0)
    await recorder.close()


async def test_a_full_batch_is_written_without_waiting_for_the_interval(store: FakeStore) -> None:
    recorder = RecordWriter(store, batch_size=10, flush_interval=3600, retention_days=None)
    recorder.start()
    for n in range(25):
        recorder.record(make_record(n))
    await eventually(lambda: recorder.written >= 20)
    assert [len(batch) for batch in store.batches[:2]] == [10, 10]
    await recorder.close()
    assert recorder.written == 25


async def test_the_interval_writes_a_partial_batch(store: FakeStore) -> None:
    recorder = RecordWriter(store, batch_size=200, flush_interval=0.01, retention_days=None)
    recorder.start()
    for n in range(3):
        recorder.record(make_record(n))
    await eventually(lambda: recorder.written == 3)
    assert store.stored == [make_record(n) for n in range(3)]
    await recorder.close()


async def test_a_failing_store_loses_nothing(store: FakeStore) -> None:
    recorder = RecordWriter(store, batch_size=4, retention_days=None)
    records = [make_record(n) for n in range(10)]
    store.fail = True
    for record in records:
        recorder.record(record)  # does not raise
    await recorder.flush()  # logs, does not raise
    assert (store.attempts, recorder.written, recorder.pending) == (1, 0, 10)
    store.fail = False
    await recorder.flush()
    assert store.stored == records
    assert (recorder.written, recorder.pending, recorder.dropped) == (10, 0, 0)


async def test_the_background_writer_retries_after_an_outage(store: FakeStore) -> None:
    recorder = RecordWriter(store, batch_size=5, flush_interval=0.01, retention_days=None)
    recorder.start()
    store.fail = True
    records = [make_record(n) for n in range(12)]
    for record in records:
        recorder.record(record)
    await eventually(lambda: store.attempts >= 2)
    assert recorder.written == 0
    store.fail = False
    await eventually(lambda: recorder.written == 12)
    assert store.stored == records
    await recorder.close()


async def test_record_returns_while_a_write_hangs(store: FakeStore) -> None:
    store.gate = threading.Event()
    recorder = RecordWriter(store, batch_size=5, flush_interval=60, retention_days=None)
    recorder.start()
    for n in range(5):
        recorder.record(make_record(n))
    await eventually(lambda: store.attempts == 1)  # the write is now stuck in its thread
    for n in range(5, 50):
        recorder.record(make_record(n))
    assert recorder.pending == 50
    store.gate.set()
    await recorder.close()
    assert store.stored == [make_record(n) for n in range(50)]


async def test_records_beyond_max_pending_are_dropped_and_counted(store: FakeStore) -> None:
    recorder = RecordWriter(store, batch_size=10, max_pending=100, retention_days=None)
    store.fail = True
    for n in range(150):
        recorder.record(make_record(n))
    await recorder.flush()
    assert (recorder.pending, recorder.dropped) == (100, 50)
    store.fail = False
    await recorder.flush()
    assert store.stored == [make_record(n) for n in range(100)]
    assert (recorder.written, recorder.pending, recorder.dropped) == (100, 0, 50)
    recorder.record(make_record(200))  # room again
    assert recorder.pending == 1


async def test_close_flushes_and_stops(store: FakeStore) -> None:
    recorder = RecordWriter(store, batch_size=100, flush_interval=3600, retention_days=None)
    recorder.start()
    for n in range(7):
        recorder.record(make_record(n))
    await recorder.close()
    assert store.stored == [make_record(n) for n in range(7)]
    recorder.record(make_record(8))
    assert (recorder.pending, recorder.dropped) == (0, 1)
    with pytest.raises(RuntimeError):
        recorder.start()


async def test_close_counts_what_it_cannot_write(store: FakeStore) -> None:
    recorder = RecordWriter(store, retention_days=None)
    store.fail = True
    for n in range(3):
        recorder.record(make_record(n))
    await recorder.close()
    assert (recorder.written, recorder.pending, recorder.dropped) == (0, 0, 3)


async def test_retention_runs_at_start_and_then_hourly(store: FakeStore) -> None:
    clock = Clock()
    recorder = RecordWriter(
        store, batch_size=100, flush_interval=0.01, retention_days=30, clock=clock
    )
    recorder.start()
    await eventually(lambda: len(store.cutoffs) == 1)
    assert store.cutoffs == [T0 - timedelta(days=30)]

    async def one_more_round() -> None:
        # Each round checks retention before it writes, so a write proves a check happened.
        written = recorder.written
        recorder.record(make_record(written))
        await eventually(lambda: recorder.written == written + 1)

    clock.now = T0 + timedelta(minutes=59)
    await one_more_round()
    await one_more_round()
    assert len(store.cutoffs) == 1
    clock.now = T0 + timedelta(hours=1)
    await one_more_round()
    await one_more_round()
    assert store.cutoffs == [T0 - timedelta(days=30), clock.now - timedelta(days=30)]
    await recorder.close()


async def test_no_retention_when_disabled(store: FakeStore) -> None:
    recorder = RecordWriter(store, flush_interval=0.01, retention_days=None)
    recorder.start()
    recorder.record(make_record(0))
    await eventually(lambda: recorder.written == 1)
    await recorder.close()
    assert store.cutoffs == []


@pytest.mark.parametrize(
    "settings",
    [
        {"batch_size": 0},
        {"flush_interval": 0},
        {"batch_size": 10, "max_pending": 5},
        {"retention_days": 0},
    ],
)
def test_bad_settings_are_refused(store: FakeStore, settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RecordWriter(store, **settings)  # type: ignore[arg-type]


def test_records_are_checked_when_built() -> None:
    record = make_record(0)
    with pytest.raises(ValueError, match="status"):
        replace(record, status="failed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aware"):
        replace(record, received_at=datetime(2026, 1, 1))
