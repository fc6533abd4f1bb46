"""Fixtures every tier may use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.postgres import connect_admin, postgres_url


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """The test PostgreSQL server, checked once per session (see ``tests/postgres.py`` for when
    its absence fails rather than skips)."""
    admin = connect_admin(postgres_url())
    yield admin
    admin.dispose()
