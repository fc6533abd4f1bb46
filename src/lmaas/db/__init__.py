"""Database URLs, engines and sessions, and the declarative base every table derives from.

The catalog lives in ``LMAAS_HOME/lmaas.db`` (SQLite) unless ``LMAAS_DATABASE_URL`` names
another database, such as ``postgresql://user@host:5432/lmaas``. Schema changes only go through
the Alembic migrations in ``lmaas/db/migrations`` (see :func:`upgrade_to_head`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

DATABASE_URL_ENV = "LMAAS_DATABASE_URL"
HOME_ENV = "LMAAS_HOME"
DEFAULT_HOME = Path("~/.lmaas")
SQLITE_FILE = "lmaas.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utc_now() -> datetime:
    """Now, as an aware UTC time: what every table of the catalog stores."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC time. SQLite hands timestamps back without a zone; the
    catalog writes them in UTC, so a naive one is UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def database_url(home: Path | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``LMAAS_DATABASE_URL`` if set, else the SQLite file under ``home``.

    ``home`` defaults to ``LMAAS_HOME`` and then ``~/.lmaas``.
    """
    env = os.environ if environ is None else environ
    configured = env.get(DATABASE_URL_ENV, "").strip()
    if configured:
        return configured
    if home is None:
        home = Path(env.get(HOME_ENV) or DEFAULT_HOME)
    return URL.create("sqlite", database=str(home.expanduser() / SQLITE_FILE)).render_as_string()


def normalize_url(url: str | URL) -> URL:
    """Pick the installed driver: plain ``postgresql://`` means psycopg 3, not psycopg2."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_db_engine(url: str | URL, *, connect_args: dict[str, Any] | None = None) -> Engine:
    """An engine for ``url``. SQLite gets foreign keys on, WAL and a busy timeout, and its
    directory is created; PostgreSQL connections are checked before use."""
    parsed = normalize_url(url)
    args = dict(connect_args or {})
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, connect_args=args)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    args.setdefault("timeout", 30.0)
    engine = create_engine(parsed, connect_args=args)
    event.listen(engine, "connect", _sqlite_on_connect(wal=not in_memory))
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_begin(connection: Connection) -> None:
    # The sqlite3 module would only open a transaction at the first write, so earlier reads
    # would not be isolated; IMMEDIATE takes the write lock up front (waiting up to the busy
    # timeout) so read-then-write transactions never fail on a lock upgrade.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_on_connect(*, wal: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event (above) issue BEGIN instead of the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # Off by default in SQLite: without it ON DELETE CASCADE and references do nothing.
            cursor.execute("PRAGMA foreign_keys=ON")
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    return on_connect


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose loaded objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(connection: Connection | None = None, url: str | URL | None = None) -> Config:
    """An Alembic ``Config`` pointing at the packaged migrations (no alembic.ini needed).

    Give ``connection`` to migrate through it, or ``url`` for offline (SQL script) mode.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        # ConfigParser interpolates "%", which a password may contain.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_to_head(target: str | URL | Engine) -> None:
    """Bring the database at ``target`` (a URL or an engine) to the newest schema."""
    engine = target if isinstance(target, Engine) else create_db_engine(target)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
    finally:
        if engine is not target:
            engine.dispose()
