"""Databases for the catalog suite: every test runs on SQLite and on PostgreSQL.

Each PostgreSQL test gets a fresh schema, dropped afterwards, so runs are isolated and
repeatable. Where the server is and when its absence fails instead of skipping (always in CI):
see ``tests/postgres.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

# Every table on Base.metadata whichever test module runs alone: the migration tests compare
# the migrated schema with the whole ORM schema.
import lmaas.controller.specs
import lmaas.jobs.tables
import lmaas.keys
import lmaas.records.store
import lmaas.store.tables  # noqa: F401
from lmaas.db import create_db_engine, session_factory, upgrade_to_head
from lmaas.store.catalog import Catalog
from tests.postgres import postgres_url, scratch_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def db_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database (no tables) of each kind."""
    if request.param == "sqlite":
        engine = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
        yield engine
        engine.dispose()
        return
    admin: Engine = request.getfixturevalue("postgres_admin")
    with scratch_schema(admin, postgres_url()) as url:
        engine = create_db_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def catalog(db_engine: Engine) -> Catalog:
    upgrade_to_head(db_engine)
    return Catalog(session_factory(db_engine))
