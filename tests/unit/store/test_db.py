"""Database URL selection (no database needed)."""

from __future__ import annotations

from pathlib import Path

from lmaas.db import create_db_engine, database_url, normalize_url


def test_default_is_sqlite_under_home(tmp_path: Path) -> None:
    url = database_url(environ={"LMAAS_HOME": str(tmp_path)})
    assert url == f"sqlite:///{tmp_path}/lmaas.db"
    assert database_url(tmp_path / "x", environ={}) == f"sqlite:///{tmp_path}/x/lmaas.db"
    assert database_url(environ={}).endswith("/.lmaas/lmaas.db")
    assert "~" not in database_url(environ={})


def test_database_url_variable_wins(tmp_path: Path) -> None:
    env = {"LMAAS_HOME": str(tmp_path), "LMAAS_DATABASE_URL": "postgresql://u@db:5432/lmaas"}
    assert database_url(tmp_path, environ=env) == "postgresql://u@db:5432/lmaas"
    assert database_url(environ={"LMAAS_DATABASE_URL": "  "}).startswith("sqlite:///")


def test_postgres_urls_use_psycopg_3() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


def test_sqlite_engine_creates_its_directory_and_enforces_foreign_keys(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path}/a/b/lmaas.db")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert (tmp_path / "a" / "b" / "lmaas.db").is_file()
    finally:
        engine.dispose()
