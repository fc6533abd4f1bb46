"""The Alembic migrations build exactly the schema the ORM models describe."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from lmaas.db import Base, alembic_config, upgrade_to_head

TABLES = {
    "models",
    "model_versions",
    "aliases",
    "blob_refs",
    "api_keys",
    "request_records",
    "deployments",
}


def test_upgrade_builds_the_orm_schema(db_engine: Engine) -> None:
    assert inspect(db_engine).get_table_names() == []
    upgrade_to_head(db_engine)
    upgrade_to_head(db_engine)  # already at head: a no-op
    assert set(inspect(db_engine).get_table_names()) == TABLES | {"alembic_version"}
    with db_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert head is not None and context.get_current_revision() == head


def test_downgrade_removes_every_table(db_engine: Engine) -> None:
    upgrade_to_head(db_engine)
    with db_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert set(inspect(db_engine).get_table_names()) <= {"alembic_version"}
    upgrade_to_head(db_engine)
    assert set(inspect(db_engine).get_table_names()) >= TABLES


def test_migration_table_set_matches_the_models() -> None:
    assert set(Base.metadata.tables) == TABLES


def test_request_records_migration_keeps_the_rows(db_engine: Engine) -> None:
    """0005 moves ``tasks`` to ``request_records`` (``task_type`` -> ``endpoint``) and back."""
    with db_engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0004")
        conn.execute(
            text(
                "INSERT INTO tasks (id, request_id, received_at, task_type, params, status, "
                "http_status, latency_ms, prompt_tokens, completion_tokens) VALUES "
                "(41, 'r-1', :t, 'chat', '{}', 'ok', 200, 12.5, 7, 3)"
            ),
            {"t": datetime(2026, 11, 1, tzinfo=UTC)},
        )
    upgrade_to_head(db_engine)
    with db_engine.begin() as conn:
        rows = conn.execute(
            text("SELECT id, request_id, endpoint, prompt_tokens FROM request_records")
        ).all()
        assert [tuple(r) for r in rows] == [(41, "r-1", "chat", 7)]
        # New rows get ids past the copied ones (PostgreSQL's sequence was moved).
        conn.execute(
            text(
                "INSERT INTO request_records (request_id, received_at, endpoint, params, status, "
                "http_status, latency_ms, prompt_tokens, completion_tokens) VALUES "
                "('r-2', :t, 'completion', '{}', 'ok', 200, 1.0, 1, 1)"
            ),
            {"t": datetime(2026, 11, 2, tzinfo=UTC)},
        )
        new_id = conn.execute(
            text("SELECT id FROM request_records WHERE request_id = 'r-2'")
        ).scalar_one()
        assert new_id > 41
        command.downgrade(alembic_config(conn), "0004")
        back = conn.execute(text("SELECT request_id, task_type FROM tasks ORDER BY id")).all()
    assert [tuple(r) for r in back] == [("r-1", "chat"), ("r-2", "completion")]
