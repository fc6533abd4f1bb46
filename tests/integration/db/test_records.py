"""RecordStore on SQLite and PostgreSQL: insert, filters, cursor pages, retention, cleaning."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine

from lmaas.db import session_factory, upgrade_to_head
from lmaas.errors import InvalidRequestError
from lmaas.records.store import RecordOut, RecordStore
from tests.records import T0, make_record


def fields(out: RecordOut) -> dict[str, Any]:
    values = asdict(out)
    del values["id"]
    return values


@pytest.fixture
def store(db_engine: Engine) -> RecordStore:
    upgrade_to_head(db_engine)
    return RecordStore(session_factory(db_engine))


def test_insert_and_read_back_every_field(store: RecordStore) -> None:
    record = make_record(prompt="Hello", params={"temperature": 0.5, "nested": {"a": [1, 2]}})
    failed = make_record(
        1,
        model=None,
        version=None,
        client_ip="::1",
        api_key_id=None,
        status="error",
        http_status=404,
        queue_time_ms=None,
        ttft_ms=None,
        completion_tokens=0,
        error="model 'x' does not exist",
    )
    store.insert_many([record, failed])
    store.insert_many([])  # a no-op
    page, cursor = store.query()
    assert cursor is None
    assert [fields(out) for out in page] == [asdict(failed), asdict(record)]
    assert page[0].id > page[1].id
    assert page[0].received_at.tzinfo is not None


def test_request_ids_may_repeat(store: RecordStore) -> None:
    store.insert_many([make_record(1, request_id="same"), make_record(2, request_id="same")])
    page, _ = store.query()
    assert [out.request_id for out in page] == ["same", "same"]
    assert page[0].id != page[1].id


def test_every_filter(store: RecordStore) -> None:
    records = [
        make_record(0, model="a", status="ok", api_key_id="k1"),
        make_record(1, model="a", status="error", api_key_id="k2", http_status=500),
        make_record(2, model="b", status="ok", api_key_id=None),
        make_record(3, model="b", status="cancelled", api_key_id="k1", http_status=499),
        make_record(4, model=None, status="error", api_key_id="k1", http_status=400),
    ]
    store.insert_many(records)

    def request_ids(**filters: Any) -> list[str]:
        page, cursor = store.query(**filters)
        assert cursor is None
        return [out.request_id for out in page]

    assert request_ids() == ["req-4", "req-3", "req-2", "req-1", "req-0"]
    assert request_ids(model="a") == ["req-1", "req-0"]
    assert request_ids(model="nope") == []
    assert request_ids(status="error") == ["req-4", "req-1"]
    assert request_ids(status="cancelled") == ["req-3"]
    assert request_ids(api_key_id="k1") == ["req-4", "req-3", "req-0"]
    # since is inclusive, until exclusive
    assert request_ids(since=T0 + timedelta(seconds=2)) == ["req-4", "req-3", "req-2"]
    assert request_ids(until=T0 + timedelta(seconds=2)) == ["req-1", "req-0"]
    window = {"since": T0 + timedelta(seconds=1), "until": T0 + timedelta(seconds=4)}
    assert request_ids(**window) == ["req-3", "req-2", "req-1"]
    # the same instant in another zone, and a naive UTC time, select the same rows
    plus2 = timezone(timedelta(hours=2))
    assert request_ids(since=(T0 + timedelta(seconds=3)).astimezone(plus2)) == ["req-4", "req-3"]
    naive = (T0 + timedelta(seconds=3)).replace(tzinfo=None)
    assert request_ids(since=naive) == ["req-4", "req-3"]
    assert request_ids(model="b", status="ok", **window) == ["req-2"]
    assert request_ids(api_key_id="k1", status="error", model="a") == []


def test_pages_through_250_records_newest_first(store: RecordStore) -> None:
    store.insert_many([make_record(n, model="a" if n % 2 else "b") for n in range(250)])
    seen: list[RecordOut] = []
    sizes = []
    cursor: int | None = None
    while True:
        page, cursor = store.query(limit=100, before_id=cursor)
        seen += page
        sizes.append(len(page))
        if cursor is None:
            break
        assert cursor == page[-1].id
    assert sizes == [100, 100, 50]
    ids = [out.id for out in seen]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 250
    assert [out.request_id for out in seen] == [f"req-{n}" for n in reversed(range(250))]

    # With a filter, and a page size that divides the matches exactly: the last full page
    # already says there is nothing more.
    seen = []
    cursor = None
    while True:
        page, cursor = store.query(model="a", limit=25, before_id=cursor)
        seen += page
        if cursor is None:
            break
    assert [out.request_id for out in seen] == [f"req-{n}" for n in reversed(range(1, 250, 2))]


def test_a_new_record_does_not_shift_the_next_page(store: RecordStore) -> None:
    store.insert_many([make_record(n) for n in range(10)])
    first, cursor = store.query(limit=4)
    store.insert_many([make_record(99)])
    second, _ = store.query(limit=4, before_id=cursor)
    assert [out.request_id for out in first] == ["req-9", "req-8", "req-7", "req-6"]
    assert [out.request_id for out in second] == ["req-5", "req-4", "req-3", "req-2"]


def test_delete_older_than(store: RecordStore) -> None:
    store.insert_many([make_record(n) for n in range(20)])
    assert store.delete_older_than(T0 - timedelta(days=1)) == 0
    # several small transactions give the same result as one
    assert store.delete_older_than(T0 + timedelta(seconds=15), chunk_size=4) == 15
    page, _ = store.query()
    assert [out.request_id for out in page] == ["req-19", "req-18", "req-17", "req-16", "req-15"]
    assert store.delete_older_than(T0 + timedelta(days=1)) == 5
    assert store.query() == ([], None)


@pytest.mark.parametrize(
    ("filters", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": -5}, "limit"),
        ({"status": "failed"}, "status"),
        ({"status": ""}, "status"),
        # A cursor no BIGINT holds was an OverflowError in SQL (a 500 at /admin/requests).
        ({"before_id": 2**63}, "before"),
        ({"before_id": 10**20}, "before"),
        ({"before_id": -1}, "before"),
    ],
)
def test_bad_queries_are_refused(store: RecordStore, filters: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        store.query(**filters)
    assert caught.value.param == param


def test_limit_bounds_are_accepted(store: RecordStore) -> None:
    store.insert_many([make_record(n) for n in range(3)])
    assert len(store.query(limit=1)[0]) == 1
    assert len(store.query(limit=1000)[0]) == 3
    assert len(store.query(before_id=2**63 - 1)[0]) == 3
    assert store.query(before_id=0)[0] == []


def test_awkward_values_are_stored_not_refused(store: RecordStore) -> None:
    """Nothing a client can put in a record makes a batch fail (it would block all others)."""
    record = make_record(
        request_id="r" * 500,
        received_at=T0.astimezone(timezone(timedelta(hours=-5))),
        endpoint="t" * 100,
        model="m" * 300,
        client_ip="c" * 100,
        api_key_id="k" * 100,
        prompt="nul\x00 and lone surrogate \ud800 and emoji \U0001f600",
        params={
            "temperature": float("nan"),
            "top_p": float("inf"),
            "logit_bias": {1: -100},
            "stop": ("a", "b\x00"),
            "seed": 2**70,
            "when": T0,
        },
        http_status=2**40,
        queue_time_ms=float("nan"),
        latency_ms=float("inf"),
        prompt_tokens=2**40,
        error="e" * 2500,
    )
    store.insert_many([record])
    [out], _ = store.query()
    assert out.received_at == T0
    assert out.request_id == "r" * 128
    assert out.endpoint == "t" * 32
    assert out.model == "m" * 128
    assert out.client_ip == "c" * 64
    assert out.api_key_id == "k" * 32
    assert out.prompt == "nul\ufffd and lone surrogate ? and emoji \U0001f600"
    assert out.params == {
        "temperature": None,
        "top_p": None,
        "logit_bias": {"1": -100},
        "stop": ["a", "b\ufffd"],
        "seed": 2**70,
        "when": "2026-11-24 12:00:00+00:00",
    }
    assert out.error == "e" * 2000
    assert out.http_status == 2**31 - 1 and out.prompt_tokens == 2**31 - 1
    assert out.queue_time_ms is None and out.latency_ms == 0.0
