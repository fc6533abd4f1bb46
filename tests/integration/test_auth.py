"""API keys over HTTP (a tiny in-process app using the auth dependencies) and `lmaas keys`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import typer
from fastapi import FastAPI, Request
from pydantic import BaseModel
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from lmaas.cli.keys import keys_app
from lmaas.db import create_db_engine, database_url, session_factory, upgrade_to_head
from lmaas.gateway.auth import Authenticator, InsecureStartupError
from lmaas.gateway.deps import AdminKey, InferenceKey
from lmaas.gateway.errors import install_error_handlers
from lmaas.keys import KeyStore


class Completion(BaseModel):
    model: str


def build_app(auth: Authenticator) -> FastAPI:
    app = FastAPI()
    app.state.auth = auth
    install_error_handlers(app)

    @app.get("/admin/ping")
    async def admin_ping(key: AdminKey) -> dict[str, str]:
        return {"key": key.id}

    @app.post("/v1/completions")
    async def complete(body: Completion, key: InferenceKey) -> dict[str, str | None]:
        Authenticator.authorize_model(key, body.model)
        return {"key": key.id if key else None, "model": body.model}

    return app


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    engine = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
    upgrade_to_head(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def keys(db: Engine) -> KeyStore:
    return KeyStore(session_factory(db))


Client = Callable[[str], httpx.AsyncClient]


@pytest.fixture
def client_for(keys: KeyStore) -> Client:
    def make(bind_host: str) -> httpx.AsyncClient:
        app = build_app(Authenticator(keys, bind_host=bind_host))
        transport = httpx.ASGITransport(app=app)
        return httpx.AsyncClient(transport=transport, base_url="http://test")

    return make


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type


# -- start-up -----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org"])
def test_refuses_to_start_on_a_public_address_without_a_key(keys: KeyStore, host: str) -> None:
    with pytest.raises(InsecureStartupError, match="lmaas keys create --scope admin") as caught:
        Authenticator(keys, bind_host=host).check_startup()
    assert isinstance(caught.value, ValueError)


def test_starts_on_a_public_address_once_a_key_exists(keys: KeyStore) -> None:
    keys.create("inference")
    Authenticator(keys, bind_host="0.0.0.0").check_startup()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_starts_on_loopback_without_keys(keys: KeyStore, host: str) -> None:
    Authenticator(keys, bind_host=host).check_startup()


def test_a_revoked_key_does_not_count_for_start_up(keys: KeyStore) -> None:
    _, info = keys.create("admin")
    keys.revoke(info.id)
    with pytest.raises(InsecureStartupError):
        Authenticator(keys, bind_host="0.0.0.0").check_startup()


# -- requests -----------------------------------------------------------------------------------


async def test_loopback_without_keys_allows_inference_but_never_admin(client_for: Client) -> None:
    async with client_for("127.0.0.1") as client:
        # The openai SDK always sends some key; an open server ignores it.
        for headers in ({}, bearer("unused")):
            r = await client.post("/v1/completions", json={"model": "m"}, headers=headers)
            assert r.status_code == 200 and r.json() == {"key": None, "model": "m"}
        r = await client.get("/admin/ping")
        assert_error(r, 401, "authentication_error")
        assert "lmaas keys create --scope admin" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"


async def test_public_bind_needs_a_key_for_inference(client_for: Client, keys: KeyStore) -> None:
    # (A running server always has a key here: check_startup refused otherwise.)
    async with client_for("0.0.0.0") as client:
        r = await client.post("/v1/completions", json={"model": "m"})
        assert_error(r, 401, "authentication_error")


async def test_any_key_closes_the_loopback_server(client_for: Client, keys: KeyStore) -> None:
    plaintext, info = keys.create("inference", "app")
    async with client_for("127.0.0.1") as client:
        r = await client.post("/v1/completions", json={"model": "m"})
        assert_error(r, 401, "authentication_error")
        r = await client.post("/v1/completions", json={"model": "m"}, headers=bearer("unused"))
        assert_error(r, 401, "authentication_error")
        r = await client.post("/v1/completions", json={"model": "m"}, headers=bearer(plaintext))
        assert r.status_code == 200 and r.json()["key"] == info.id
        r = await client.post(
            "/v1/completions", json={"model": "m"}, headers={"X-API-Key": plaintext}
        )
        assert r.status_code == 200 and r.json()["key"] == info.id


async def test_admin_route_scopes(client_for: Client, keys: KeyStore) -> None:
    admin, admin_info = keys.create("admin", "ops")
    inference, _ = keys.create("inference", "app")
    async with client_for("0.0.0.0") as client:
        r = await client.get("/admin/ping", headers=bearer(admin))
        assert r.status_code == 200 and r.json() == {"key": admin_info.id}
        assert_error(
            await client.get("/admin/ping", headers=bearer(inference)), 403, "permission_error"
        )
        assert_error(await client.get("/admin/ping"), 401, "authentication_error")
        # Admin keys may also do inference.
        r = await client.post("/v1/completions", json={"model": "m"}, headers=bearer(admin))
        assert r.status_code == 200 and r.json()["key"] == admin_info.id


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer lmaas-000000000000-" + "a" * 43,  # well-formed, unknown
        "Bearer not-a-key",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer lmaas-000000000000-" + "a" * 43 + " trailing",
    ],
)
async def test_bad_credentials_are_401(
    client_for: Client, keys: KeyStore, authorization: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys.create("admin")
    caplog.set_level(logging.DEBUG)
    async with client_for("127.0.0.1") as client:
        for method, path in (("GET", "/admin/ping"), ("POST", "/v1/completions")):
            r = await client.request(
                method, path, json={"model": "m"}, headers={"Authorization": authorization}
            )
            assert_error(r, 401, "authentication_error")
            secret = authorization.partition(" ")[2]
            if secret:
                assert secret not in r.text
    assert all(authorization not in record.getMessage() for record in caplog.records)


async def test_revoked_key_is_401(client_for: Client, keys: KeyStore) -> None:
    plaintext, info = keys.create("admin")
    async with client_for("0.0.0.0") as client:
        assert (await client.get("/admin/ping", headers=bearer(plaintext))).status_code == 200
        keys.revoke(info.id)
        r = await client.get("/admin/ping", headers=bearer(plaintext))
        assert_error(r, 401, "authentication_error")
        assert r.json()["error"]["code"] == "api_key_revoked"
        r = await client.post("/v1/completions", json={"model": "m"}, headers=bearer(plaintext))
        assert_error(r, 401, "authentication_error")


async def test_model_restriction_is_403(client_for: Client, keys: KeyStore) -> None:
    plaintext, _ = keys.create("inference", "limited", ["alpha"])
    async with client_for("0.0.0.0") as client:
        for model in ("alpha", "alpha:production"):
            r = await client.post(
                "/v1/completions", json={"model": model}, headers=bearer(plaintext)
            )
            assert r.status_code == 200, r.text
        r = await client.post("/v1/completions", json={"model": "beta"}, headers=bearer(plaintext))
        assert_error(r, 403, "permission_error")
        assert r.json()["error"]["param"] == "model"


async def test_authenticate_inference_checks_the_model_itself(keys: KeyStore) -> None:
    plaintext, info = keys.create("inference", "limited", ["alpha"])
    auth = Authenticator(keys, bind_host="127.0.0.1")
    app = FastAPI()
    install_error_handlers(app)
    seen: list[str | None] = []

    @app.get("/v1/models/{model}")
    async def show(model: str, request: Request) -> dict[str, str]:
        key = await auth.authenticate_inference(request, model)
        seen.append(key.id if key else None)
        assert request.state.api_key == key  # for request records
        return {"model": model}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/v1/models/alpha", headers=bearer(plaintext))).status_code == 200
        r = await client.get("/v1/models/beta", headers=bearer(plaintext))
        assert_error(r, 403, "permission_error")
    assert seen == [info.id]


async def test_host_header_does_not_change_the_decision(client_for: Client, keys: KeyStore) -> None:
    keys.create("admin")
    async with client_for("127.0.0.1") as client:
        for host in ("localhost", "127.0.0.1", "evil.example"):
            r = await client.get("/admin/ping", headers={"Host": host})
            assert_error(r, 401, "authentication_error")
            r = await client.post("/v1/completions", json={"model": "m"}, headers={"Host": host})
            assert_error(r, 401, "authentication_error")


# -- CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    return {"LMAAS_HOME": str(tmp_path / "home"), "LMAAS_DATABASE_URL": ""}


def _cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(keys_app, name="keys")
    return root


def test_cli_create_ls_revoke(cli_env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    app = _cli()
    created = runner.invoke(
        app,
        [
            "keys",
            "create",
            "--scope",
            "inference",
            "--name",
            "app",
            "--models",
            "a",
            "--models",
            "b",
        ],
        env=cli_env,
    )
    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip()
    assert created.stdout == plaintext + "\n"  # the key alone, for `KEY=$(lmaas keys create ...)`
    assert "shown only this once" in created.stderr
    key_id = plaintext.split("-")[1]

    listed = runner.invoke(app, ["keys", "ls"], env=cli_env)
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "SCOPE", "MODELS"]
    assert row.split()[:4] == [key_id, "app", "inference", "a,b"]
    assert plaintext not in listed.output and plaintext.split("-", 2)[2] not in listed.output

    revoked = runner.invoke(app, ["keys", "revoke", key_id], env=cli_env)
    assert revoked.exit_code == 0, revoked.output
    assert f"revoked key {key_id}" in revoked.stderr
    listed = runner.invoke(app, ["keys", "ls"], env=cli_env)
    row = listed.stdout.splitlines()[1]
    assert row.endswith("Z") and " - " in row  # revoked at <time>; last used: never

    engine = create_db_engine(database_url(tmp_path / "home", environ={}))
    try:
        store = KeyStore(session_factory(engine))
        (info,) = store.list()
        assert info.id == key_id and info.revoked_at is not None
        with engine.connect() as conn:
            dump = repr(conn.execute(text("SELECT * FROM api_keys")).all())
        assert plaintext not in dump
    finally:
        engine.dispose()


def test_cli_home_option_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    app = _cli()
    env = {"LMAAS_HOME": str(tmp_path / "unused"), "LMAAS_DATABASE_URL": ""}
    home = str(tmp_path / "elsewhere")
    created = runner.invoke(app, ["keys", "create", "--scope", "admin", "--home", home], env=env)
    assert created.exit_code == 0, created.output
    assert (tmp_path / "elsewhere" / "lmaas.db").is_file()
    assert not (tmp_path / "unused").exists()

    bad_scope = runner.invoke(app, ["keys", "create", "--scope", "root", "--home", home], env=env)
    assert bad_scope.exit_code == 1 and "scope must be" in bad_scope.stderr
    assert bad_scope.stdout == ""
    missing = runner.invoke(app, ["keys", "revoke", "0123456789ab", "--home", home], env=env)
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    empty_home = str(tmp_path / "empty")
    listed = runner.invoke(app, ["keys", "ls", "--home", empty_home], env=env)
    assert listed.exit_code == 0 and listed.stdout == "" and "no API keys" in listed.stderr
