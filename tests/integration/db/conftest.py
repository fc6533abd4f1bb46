"""Databases for the catalog suite: every test runs on SQLite and on PostgreSQL.

PostgreSQL is taken from ``LMAAS_TEST_POSTGRES_URL`` (default: the local trust-auth server).
Each test gets a fresh schema, dropped afterwards, so runs are isolated and repeatable. When the
server cannot be reached the PostgreSQL variants are skipped with the reason printed, unless
``LMAAS_REQUIRE_POSTGRES=1`` (set it in CI) turns that into a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from lmaas.db import create_db_engine, session_factory, upgrade_to_head
from lmaas.store.catalog import Catalog

POSTGRES_URL = os.environ.get(
    "LMAAS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _postgres_admin() -> Engine:
    admin = create_db_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        admin.dispose()
        reason = f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(exc.orig).strip()}"
        if os.environ.get("LMAAS_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return admin


@pytest.fixture(params=["sqlite", "postgresql"])
def db_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database (no tables) of each kind."""
    if request.param == "sqlite":
        engine = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
        yield engine
        engine.dispose()
        return
    admin = _postgres_admin()
    schema = f"lmaas_test_{uuid.uuid4().hex[:16]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_db_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def catalog(db_engine: Engine) -> Catalog:
    upgrade_to_head(db_engine)
    return Catalog(session_factory(db_engine))
