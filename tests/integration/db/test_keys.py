"""KeyStore on SQLite and PostgreSQL: hashing, verification, revocation, caching, migrations."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from lmaas.db import Base, alembic_config, session_factory, upgrade_to_head
from lmaas.errors import AuthenticationError, InvalidRequestError, NotFoundError
from lmaas.keys import KeyStore, hash_key
from lmaas.store.catalog import Catalog


class Clocks:
    """A monotonic clock for the cache and a wall clock for stored timestamps, both manual."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def store(db_engine: Engine, catalog: Catalog, clocks: Clocks) -> KeyStore:
    # `catalog` has migrated the database to head.
    return KeyStore(
        session_factory(db_engine),
        cache_ttl=5.0,
        clock=lambda: clocks.mono,
        now=lambda: clocks.wall,
    )


def _other_process_store(db_engine: Engine, clocks: Clocks) -> KeyStore:
    """A second store with its own cache, as the CLI in another process would have."""
    return KeyStore(session_factory(db_engine), clock=lambda: clocks.mono, now=lambda: clocks.wall)


def _dump(db_engine: Engine) -> str:
    with db_engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).all()
    return repr([tuple(row) for row in rows])


def test_migration_adds_api_keys_and_matches_the_orm(db_engine: Engine) -> None:
    upgrade_to_head(db_engine)
    assert "api_keys" in inspect(db_engine).get_table_names()
    with db_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert "api_keys" in Base.metadata.tables
        assert compare_metadata(context, Base.metadata) == []
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert context.get_current_revision() == head
    script = ScriptDirectory.from_config(alembic_config()).get_revision("0002")
    assert script is not None and script.down_revision == "0001"
    with db_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    assert "api_keys" not in inspect(db_engine).get_table_names()
    assert "models" in inspect(db_engine).get_table_names()


def test_only_the_hash_is_stored(db_engine: Engine, store: KeyStore) -> None:
    plaintext, info = store.create("admin", "ops", None)
    _, secret = plaintext.removeprefix("lmaas-").split("-", 1)
    dump = _dump(db_engine)
    assert plaintext not in dump
    assert secret not in dump
    assert hash_key(plaintext) in dump
    assert info.id in dump
    assert "plaintext" not in repr(info) and plaintext not in repr(info)


def test_create_and_verify(store: KeyStore, clocks: Clocks) -> None:
    plaintext, info = store.create("inference", "app", ["beta", "alpha"])
    assert plaintext.startswith(f"lmaas-{info.id}-")
    assert (info.scope, info.name, info.models) == ("inference", "app", ("alpha", "beta"))
    assert info.created_at == clocks.wall and info.revoked_at is None
    verified = store.verify(plaintext)
    assert verified.id == info.id and verified.models == ("alpha", "beta")
    assert verified.last_used_at == clocks.wall
    assert store.count_active() == 1
    assert [k.id for k in store.list()] == [info.id]
    assert store.get(info.id).id == info.id


def test_verify_compares_hashes_in_constant_time(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    plaintext, _ = store.create("admin")
    calls: list[tuple[Any, Any]] = []
    real_compare = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what keys.py calls
    store.verify(plaintext)
    assert calls == [(hash_key(plaintext), hash_key(plaintext))]


@pytest.mark.parametrize("kind", ["malformed", "unknown_id", "wrong_secret"])
def test_bad_keys_are_401(store: KeyStore, kind: str) -> None:
    plaintext, info = store.create("admin")
    bad = {
        "malformed": plaintext + "x",
        "unknown_id": "lmaas-000000000000-" + plaintext[-43:],
        # Right id, another secret: the hash comparison must reject it.
        "wrong_secret": f"lmaas-{info.id}-"
        + ("A" if plaintext[-43] != "A" else "B")
        + plaintext[-42:],
    }[kind]
    with pytest.raises(AuthenticationError) as caught:
        store.verify(bad)
    assert caught.value.status_code == 401
    assert bad not in caught.value.message and plaintext not in caught.value.message


def test_revoked_keys_are_401_and_listed(store: KeyStore, clocks: Clocks) -> None:
    plaintext, info = store.create("inference", "gone")
    store.verify(plaintext)
    clocks.advance(1)
    revoked = store.revoke(info.id)
    assert revoked.revoked_at == clocks.wall
    # The revoking process stops accepting it at once, despite its cache.
    with pytest.raises(AuthenticationError, match="revoked"):
        store.verify(plaintext)
    assert store.count_active() == 0
    again = store.revoke(info.id)  # idempotent; the first time is kept
    assert again.revoked_at == revoked.revoked_at
    assert [(k.id, k.revoked_at) for k in store.list()] == [(info.id, clocks.wall)]


def test_revoke_unknown_is_404(store: KeyStore) -> None:
    for key_id in ("0123456789ab", "../etc", "lmaas-x"):
        with pytest.raises(NotFoundError):
            store.revoke(key_id)


def test_revoke_in_another_process_takes_effect_within_the_ttl(
    db_engine: Engine, store: KeyStore, clocks: Clocks
) -> None:
    plaintext, info = store.create("inference")
    assert store.verify(plaintext).id == info.id
    assert store.count_active() == 1
    _other_process_store(db_engine, clocks).revoke(info.id)
    # Still cached here (no DB round trip) until the TTL runs out...
    assert store.verify(plaintext).id == info.id
    assert store.count_active() == 1
    clocks.advance(5.0)
    with pytest.raises(AuthenticationError):
        store.verify(plaintext)
    assert store.count_active() == 0


def test_cache_serves_verify_without_the_database(
    db_engine: Engine, store: KeyStore, clocks: Clocks
) -> None:
    plaintext, info = store.create("admin")
    store.verify(plaintext)
    assert store.cached_verify(plaintext) == store.verify(plaintext)
    with db_engine.begin() as conn:
        conn.execute(text("DELETE FROM api_keys"))
    assert store.verify(plaintext).id == info.id  # from memory
    clocks.advance(5.0)
    assert store.cached_verify(plaintext) is None
    with pytest.raises(AuthenticationError):
        store.verify(plaintext)


def test_last_used_is_written_at_most_once_a_minute(
    db_engine: Engine, store: KeyStore, clocks: Clocks
) -> None:
    plaintext, info = store.create("inference")
    first = clocks.wall
    store.verify(plaintext)
    for _ in range(5):  # past the cache TTL each time, still within the minute
        clocks.advance(10)
        store.verify(plaintext)
    assert store.get(info.id).last_used_at == first
    clocks.advance(10)  # 60 s after the first use
    store.verify(plaintext)
    assert store.get(info.id).last_used_at == clocks.wall


def test_create_validates(store: KeyStore) -> None:
    for scope, name, models in (
        ("root", "", None),
        ("admin", "x" * 200, None),
        ("inference", "", []),
        ("inference", "", ["../../etc/passwd"]),
    ):
        with pytest.raises(InvalidRequestError):
            store.create(scope, name, models)
    assert store.list() == []


def test_count_active_ignores_revoked(store: KeyStore) -> None:
    assert store.count_active() == 0
    _, a = store.create("admin")
    store.create("inference")
    assert store.count_active() == 2  # create invalidates the cached count
    store.revoke(a.id)
    assert store.count_active() == 1
