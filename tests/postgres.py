"""PostgreSQL for the tests: where the server is, whether its absence fails or skips, and a
scratch schema per user so runs never see each other's rows.

The server is ``LMAAS_TEST_POSTGRES_URL`` (default: the local trust-auth server,
``postgresql://postgres@127.0.0.1:5432/test``). PostgreSQL is a supported catalog, so in CI
(``CI=true``, or ``LMAAS_REQUIRE_POSTGRES=1`` anywhere) an unreachable server fails the tests
that need it; elsewhere they are skipped with the reason. To check that CI really fails, point
the URL at a closed port: ``CI=true LMAAS_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:9/test``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError

from lmaas.db import create_db_engine

POSTGRES_URL_ENV = "LMAAS_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_url(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL


def postgres_required(environ: Mapping[str, str] = os.environ) -> bool:
    """True in CI (``CI`` set to true/1/yes) or with ``LMAAS_REQUIRE_POSTGRES=1``."""
    in_ci = environ.get("CI", "").strip().lower() in ("true", "1", "yes")
    return in_ci or environ.get("LMAAS_REQUIRE_POSTGRES") == "1"


def connect_admin(url: str) -> Engine:
    """An engine on the test server, checked with ``SELECT 1``; an unreachable server fails the
    test when :func:`postgres_required`, else skips it, naming the URL and the driver's error."""
    admin = create_db_engine(url, connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
        return admin
    except OperationalError as exc:
        reason = f"PostgreSQL at {url} is unreachable: {' '.join(str(exc.orig).split())}"
    admin.dispose()
    if postgres_required():
        pytest.fail(f"{reason} (required: CI or LMAAS_REQUIRE_POSTGRES=1)", pytrace=False)
    pytest.skip(f"{reason} (set {POSTGRES_URL_ENV} to another server)")


def with_search_path(url: str, schema: str) -> URL:
    """``url`` whose connections see ``schema`` first (libpq's ``options``)."""
    parsed = make_url(url)
    return parsed.update_query_dict({"options": f"-csearch_path={schema}"})


@contextmanager
def scratch_schema(admin: Engine, url: str) -> Iterator[URL]:
    """A new, empty schema, dropped with everything in it on exit; yields a URL on it."""
    schema = f"lmaas_test_{uuid.uuid4().hex[:16]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield with_search_path(url, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
