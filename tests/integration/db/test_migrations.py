"""The Alembic migrations build exactly the schema the ORM models describe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from lmaas.db import Base, alembic_config, as_utc, upgrade_to_head

TABLES = {
    "models",
    "model_versions",
    "aliases",
    "blob_refs",
    "blob_leases",
    "api_keys",
    "request_records",
    "deployments",
    "files",
    "jobs",
    "job_events",
    "job_items",
    "evals",
    "version_evaluations",
    "job_checkpoints",
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


def test_blob_leases_migration_keeps_versions_and_their_refs(db_engine: Engine) -> None:
    """0006 adds ``model_versions.error`` and ``blob_leases`` without touching existing rows
    (on SQLite a table copy would fire the cascades to aliases and blob_refs)."""
    digest = "sha256:" + "ab" * 32
    with db_engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0005")
        conn.execute(
            text(
                "INSERT INTO models (id, name, description, last_version, created_at) "
                "VALUES (1, 'm', '', 1, :t)"
            ),
            {"t": datetime(2026, 11, 1, tzinfo=UTC)},
        )
        conn.execute(
            text(
                "INSERT INTO model_versions (id, model_id, number, format, size_bytes, digest, "
                "source, description, created_at, state) "
                "VALUES (7, 1, 1, 'gguf', 3, :d, '', '', :t, 'ready')"
            ),
            {"d": digest, "t": datetime(2026, 11, 1, tzinfo=UTC)},
        )
        conn.execute(
            text("INSERT INTO blob_refs (version_id, digest) VALUES (7, :d)"), {"d": digest}
        )
        conn.execute(
            text(
                "INSERT INTO aliases (model_id, name, version_id, updated_at) "
                "VALUES (1, 'latest', 7, :t)"
            ),
            {"t": datetime(2026, 11, 1, tzinfo=UTC)},
        )
    for target in ("head", "0005"):
        with db_engine.begin() as conn:
            if target == "head":
                command.upgrade(alembic_config(conn), "head")
                assert conn.execute(text("SELECT id, error FROM model_versions")).all() == [
                    (7, None)
                ]
            else:
                command.downgrade(alembic_config(conn), "0005")
            assert conn.execute(text("SELECT version_id, digest FROM blob_refs")).all() == [
                (7, digest)
            ]
            assert conn.execute(text("SELECT name, version_id FROM aliases")).all() == [
                ("latest", 7)
            ]
    assert "blob_leases" not in inspect(db_engine).get_table_names()


def test_files_migration_up_and_down_keeps_the_rest(db_engine: Engine) -> None:
    """0008 adds ``files`` (with its constraints) and takes it away again; the blob refs of
    versions are untouched either way."""
    t = datetime(2026, 12, 4, tzinfo=UTC)
    with db_engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0007")
        assert "files" not in inspect(conn).get_table_names()
        conn.execute(
            text("INSERT INTO blob_leases (upload, digest, created_at) VALUES ('u', :d, :t)"),
            {"d": "sha256:" + "cd" * 32, "t": t},
        )
        command.upgrade(alembic_config(conn), "0008")
        row = {"d": "sha256:" + "ab" * 32, "t": t}
        conn.execute(
            text(
                "INSERT INTO files (id, purpose, filename, bytes, digest, created_at, "
                "owner_key_id, status) VALUES "
                "('file-0000000000000100000000', 'batch', 'a.jsonl', 3, :d, :t, NULL, "
                "'processed')"
            ),
            row,
        )
        assert conn.execute(text("SELECT id, owner_key_id FROM files")).all() == [
            ("file-0000000000000100000000", None)
        ]
    for bad in ("status", "bytes"):
        values = {"status": "'processed'", "bytes": "3", bad: "'nope'" if bad == "status" else "-1"}
        with pytest.raises(IntegrityError), db_engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO files (id, purpose, filename, bytes, digest, created_at, "
                    f"status) VALUES ('file-x', 'batch', 'b', {values['bytes']}, :d, :t, "
                    f"{values['status']})"
                ),
                row,
            )
    with db_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0007")
        assert "files" not in inspect(conn).get_table_names()
        assert conn.execute(text("SELECT upload FROM blob_leases")).all() == [("u",)]


def test_jobs_migration_up_and_down_keeps_the_rest(db_engine: Engine) -> None:
    """0009 adds ``jobs``, ``job_events`` and ``job_items`` (events and items go with their
    job) and takes them away again; the files of 0008 are untouched either way."""
    t = datetime(2026, 12, 5, tzinfo=UTC)
    job = "batch_0000000000000100000000"
    with db_engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0008")
        conn.execute(
            text(
                "INSERT INTO files (id, purpose, filename, bytes, digest, created_at, "
                "owner_key_id, status) VALUES ('file-0000000000000100000000', 'batch', 'a', 1, "
                ":d, :t, NULL, 'processed')"
            ),
            {"d": "sha256:" + "ab" * 32, "t": t},
        )
        command.upgrade(alembic_config(conn), "0009")
        conn.execute(
            text(
                "INSERT INTO jobs (id, kind, input, status, priority, created_at, "
                "progress_total, progress_done, progress_failed, attempts, last_event) VALUES "
                "(:id, 'batch', '{}', 'queued', 0, :t, 2, 0, 0, 0, 1)"
            ),
            {"id": job, "t": t},
        )
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, seq, created_at, level, message) "
                "VALUES (:id, 1, :t, 'info', 'queued')"
            ),
            {"id": job, "t": t},
        )
        conn.execute(
            text(
                "INSERT INTO job_items (job_id, custom_id, line, ok, output, prompt_tokens, "
                "completion_tokens, created_at) VALUES (:id, 'a', 1, :ok, '{}', 1, 2, :t)"
            ),
            {"id": job, "ok": True, "t": t},
        )
    for bad in ("status = 'lost'", "attempts = -1", "progress_done = -1"):
        with pytest.raises(IntegrityError), db_engine.begin() as conn:
            conn.execute(text(f"UPDATE jobs SET {bad}"))
    with pytest.raises(IntegrityError), db_engine.begin() as conn:
        conn.execute(text("UPDATE job_events SET level = 'debug'"))
    with db_engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs"))
        assert conn.execute(text("SELECT count(*) FROM job_events")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM job_items")).scalar_one() == 0
        command.downgrade(alembic_config(conn), "0008")
        names = set(inspect(conn).get_table_names())
        assert names.isdisjoint({"jobs", "job_events", "job_items"})
        assert conn.execute(text("SELECT purpose FROM files")).all() == [("batch",)]


def test_job_deadlines_migration_keeps_events_and_items(db_engine: Engine) -> None:
    """0011 adds ``jobs.expires_at`` (a batch's is its creation + 24 h) and the status
    ``expired``; on SQLite the table is copied, and its events and items (which cascade from
    it) must survive that, both ways. Down again, an expired job is ``cancelled``."""
    t = datetime(2026, 12, 5, tzinfo=UTC)
    jobs = {"batch_0000000000000100000000": "batch", "eval_0000000000000100000000": "eval_run"}
    with db_engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0010")
        for job, kind in jobs.items():
            conn.execute(
                text(
                    "INSERT INTO jobs (id, kind, input, status, priority, created_at, "
                    "progress_total, progress_done, progress_failed, attempts, last_event) "
                    "VALUES (:id, :kind, '{}', 'in_progress', 0, :t, 2, 1, 0, 1, 1)"
                ),
                {"id": job, "kind": kind, "t": t},
            )
            conn.execute(
                text(
                    "INSERT INTO job_events (job_id, seq, created_at, level, message) "
                    "VALUES (:id, 1, :t, 'info', 'queued')"
                ),
                {"id": job, "t": t},
            )
            conn.execute(
                text(
                    "INSERT INTO job_items (job_id, custom_id, line, ok, output, prompt_tokens, "
                    "completion_tokens, created_at) VALUES (:id, 'a', 1, :ok, '{}', 1, 2, :t)"
                ),
                {"id": job, "ok": True, "t": t},
            )

    def kept(conn: Connection) -> None:
        for table in ("job_events", "job_items"):
            rows = conn.execute(text(f"SELECT job_id FROM {table} ORDER BY job_id")).all()
            assert [r[0] for r in rows] == sorted(jobs)

    with db_engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0011")
        kept(conn)
        deadlines = dict(conn.execute(text("SELECT kind, expires_at FROM jobs")).all())
        assert deadlines["eval_run"] is None
        assert as_utc(_datetime(deadlines["batch"])) == t + timedelta(hours=24)
        conn.execute(text("UPDATE jobs SET status = 'expired' WHERE kind = 'batch'"))
    with pytest.raises(IntegrityError), db_engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'lost'"))
    with db_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0010")
        kept(conn)
        assert dict(conn.execute(text("SELECT kind, status FROM jobs")).all()) == {
            "batch": "cancelled",
            "eval_run": "in_progress",
        }
        assert "expires_at" not in {c["name"] for c in inspect(conn).get_columns("jobs")}
    with pytest.raises(IntegrityError), db_engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'expired'"))


def test_job_checkpoints_migration_up_and_down_keeps_the_files(db_engine: Engine) -> None:
    """0016 adds ``job_checkpoints`` (a row goes with its file) and takes it away again; the
    files are untouched either way."""
    t = datetime(2026, 12, 10, tzinfo=UTC)
    insert_file = text(
        "INSERT INTO files (id, purpose, filename, bytes, digest, created_at, owner_key_id, "
        "status) VALUES (:id, 'fine-tune-checkpoint', 'c.tar', 1, :d, :t, NULL, 'processed')"
    )
    insert_row = text(
        "INSERT INTO job_checkpoints (job_id, file_id, step, created_at) "
        "VALUES (:job, :file, :step, :t)"
    )
    with db_engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0015")
        for n in (1, 2, 3):
            conn.execute(insert_file, {"id": f"file-{n}", "d": "sha256:" + "ab" * 32, "t": t})
        command.upgrade(alembic_config(conn), "0016")
        conn.execute(insert_row, {"job": "ftjob_1", "file": "file-1", "step": 4, "t": t})
        conn.execute(insert_row, {"job": "ftjob_2", "file": "file-2", "step": 0, "t": t})
        conn.execute(text("DELETE FROM files WHERE id = 'file-2'"))
        rows = conn.execute(text("SELECT job_id, file_id, step FROM job_checkpoints")).all()
        assert [tuple(r) for r in rows] == [("ftjob_1", "file-1", 4)]
    for row in (
        {"job": "ftjob_3", "file": "file-1", "step": 1},  # one file, one job
        {"job": "ftjob_3", "file": "file-9", "step": 1},  # no such file
        {"job": "ftjob_3", "file": "file-3", "step": -1},
    ):
        with pytest.raises(IntegrityError), db_engine.begin() as conn:
            conn.execute(insert_row, row | {"t": t})
    with db_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0015")
        assert "job_checkpoints" not in inspect(conn).get_table_names()
        ids = conn.execute(text("SELECT id FROM files ORDER BY id")).all()
        assert [r[0] for r in ids] == ["file-1", "file-3"]


def _datetime(value: object) -> datetime:
    """A timestamp read with plain SQL: SQLite gives its text."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
