"""The Alembic migrations build exactly the schema the ORM models describe."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

import lmaas.store.catalog  # registers models, versions, aliases, blob refs
import lmaas.controller.specs  # registers the deployments table on Base.metadata
import lmaas.keys  # registers the api_keys table on Base.metadata
import lmaas.records.store  # noqa: F401 - registers the request_records table on Base.metadata
from lmaas.db import Base, alembic_config, upgrade_to_head

TABLES = {"models", "model_versions", "aliases", "blob_refs", "api_keys", "request_records", "deployments"}


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
