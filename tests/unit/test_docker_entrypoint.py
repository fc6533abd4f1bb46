"""deploy/docker/entrypoint.py: the admin key from LMAAS_ADMIN_KEY lands in the catalog the
command uses, once, as a key that lmaas itself accepts; bad keys stop the container with a reason
that does not contain them."""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lmaas.db import create_db_engine, database_url, session_factory
from lmaas.gateway.auth import Authenticator
from lmaas.keys import KeyStore

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "docker" / "entrypoint.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lmaas_entrypoint", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


entrypoint = load()


def new_key() -> str:
    return f"lmaas-{secrets.token_hex(6)}-{secrets.token_urlsafe(32)}"


def key_store(url: str) -> KeyStore:
    return KeyStore(session_factory(create_db_engine(url)), cache_ttl=0)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return database_url(tmp_path, environ={})


def test_imported_key_is_an_active_admin_key_lmaas_accepts(url: str) -> None:
    key = new_key()
    assert entrypoint.import_admin_key(key, url) == "created"
    keys = key_store(url)
    info = keys.verify(key)
    assert info.is_admin and info.active and info.name == "bootstrap"
    # `lmaas serve --host 0.0.0.0` starts now: it refuses only while no key is active
    Authenticator(keys, bind_host="0.0.0.0").check_startup()


def test_a_second_start_finds_the_key(url: str) -> None:
    key = new_key()
    entrypoint.import_admin_key(key, url)
    assert entrypoint.import_admin_key(key, url) == "present"
    assert len(key_store(url).list()) == 1


def test_a_revoked_key_stays_revoked(url: str) -> None:
    key = new_key()
    entrypoint.import_admin_key(key, url)
    keys = key_store(url)
    keys.revoke(key.split("-")[1])
    assert entrypoint.import_admin_key(key, url) == "revoked"
    assert keys.count_active() == 0


def test_another_key_with_the_same_id_is_refused(url: str) -> None:
    key = new_key()
    entrypoint.import_admin_key(key, url)
    impostor = key[: -len("xx")] + ("aa" if not key.endswith("aa") else "bb")
    with pytest.raises(entrypoint.BootstrapError, match="another key with id") as caught:
        entrypoint.import_admin_key(impostor, url)
    assert impostor not in str(caught.value)


@pytest.mark.parametrize("bad", ["replace-me", "lmaas-0123456789ab-short", "sk-" + "a" * 48])
def test_a_malformed_key_is_refused_without_echoing_it(url: str, bad: str) -> None:
    with pytest.raises(entrypoint.BootstrapError, match="not an lmaas key") as caught:
        entrypoint.import_admin_key(bad, url)
    assert bad not in str(caught.value)


def test_the_catalog_is_the_one_the_command_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("LMAAS_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "lmaas.yaml"
    config.write_text(f"home: {tmp_path / 'from-config'}\n")
    cmd = ["lmaas", "serve", "--config", str(config)]
    assert entrypoint.catalog_url(cmd).endswith("from-config/lmaas.db")
    flag = f"--home={tmp_path / 'flag'}"
    assert entrypoint.catalog_url([*cmd, flag]).endswith("flag/lmaas.db")
    monkeypatch.setenv("LMAAS_DATABASE_URL", "postgresql://u@db/lmaas")
    assert entrypoint.catalog_url(cmd) == "postgresql://u@db/lmaas"


def run(tmp_path: Path, key: str, *command: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMAAS_")}
    env |= {"LMAAS_HOME": str(tmp_path), "LMAAS_ADMIN_KEY": key}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_script_imports_the_key_then_runs_the_command(tmp_path: Path) -> None:
    key = new_key()
    done = run(tmp_path, key, sys.executable, "-c", "print('the command ran')")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "the command ran"
    assert "stored from LMAAS_ADMIN_KEY" in done.stderr and key not in done.stderr
    assert key_store(database_url(tmp_path, environ={})).verify(key).is_admin


def test_the_example_secret_stops_the_container(tmp_path: Path) -> None:
    """deploy/kubernetes/secret.example.yaml's placeholder fails with the expected format."""
    done = run(tmp_path, "replace-me", sys.executable, "-c", "print('the command ran')")
    assert done.returncode == 2
    assert "the command ran" not in done.stdout
    assert "it must read lmaas-<12 lowercase hex>" in done.stderr
