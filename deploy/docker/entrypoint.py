"""The image's entry point: import an admin key given in the environment, then run the command.

``lmaas serve --host 0.0.0.0`` refuses to start while the catalog has no active key, and keys are
made by ``lmaas keys create``, which prints a random one. A container wants its first key from
a secret instead: when ``LMAAS_ADMIN_KEY`` holds a key in lmaas' format
(``lmaas-<12 hex id>-<43 URL-safe characters>``), this script stores it (its SHA-256, as
``lmaas keys create`` would) as an admin key named ``bootstrap`` in the catalog the command
will use, unless a key with that id is there already. A revoked bootstrap key stays revoked:
rotate it by putting a new key in the secret. Then it replaces itself with the command (by
default ``lmaas serve --host 0.0.0.0``), so the server gets the signals.

The catalog is the one ``lmaas serve`` opens: ``LMAAS_DATABASE_URL`` / ``database_url``, else
the SQLite file under ``LMAAS_HOME`` / ``home``, read from the command's ``--config`` and
``--home`` as ``lmaas serve`` reads them.
"""

from __future__ import annotations

import hmac
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

ADMIN_KEY_ENV: Final = "LMAAS_ADMIN_KEY"
KEY_NAME: Final = "bootstrap"
KEY_FORMAT: Final = "lmaas-<12 lowercase hex>-<43 characters of A-Z a-z 0-9 _ ->"


class BootstrapError(Exception):
    """The key cannot be imported; the message says why (never the key)."""


def option(argv: Sequence[str], *names: str) -> str | None:
    """The value of the last ``--name VALUE`` or ``--name=VALUE`` in ``argv``."""
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "="):
                value = arg.partition("=")[2]
    return value


def catalog_url(argv: Sequence[str]) -> str:
    """The database URL the command will use (see the module doc): its ``--config`` and
    ``--home`` count when it is an ``lmaas`` command, the environment's in any case."""
    from lmaas.config import load_settings
    from lmaas.db import database_url

    is_lmaas = bool(argv) and Path(argv[0]).name == "lmaas"
    config = option(argv, "--config", "-c") if is_lmaas else None
    home = option(argv, "--home") if is_lmaas else None
    settings = load_settings(Path(config) if config else None, home=Path(home) if home else None)
    return settings.database_url or database_url(settings.home_dir)


def check_format(plaintext: str) -> str:
    """The id of ``plaintext``, a well-formed lmaas key, else :class:`BootstrapError`."""
    from lmaas.keys import parse_key

    key_id = parse_key(plaintext.strip())
    if key_id is None:
        raise BootstrapError(f"{ADMIN_KEY_ENV} is not an lmaas key: it must read {KEY_FORMAT}")
    return key_id


def import_admin_key(plaintext: str, url: str) -> str:
    """Store ``plaintext`` as an active admin key in the catalog at ``url`` (migrated first).
    Returns ``created``, ``present`` or ``revoked`` (there, but revoked: left so)."""
    from sqlalchemy.exc import IntegrityError

    from lmaas.db import create_db_engine, session_factory, upgrade_to_head, utc_now
    from lmaas.keys import KeyRow, hash_key

    key_id = check_format(plaintext)
    digest = hash_key(plaintext.strip())
    engine = create_db_engine(url)
    try:
        upgrade_to_head(engine)
        sessions = session_factory(engine)
        for _ in range(2):  # a second container may insert the same key at the same moment
            try:
                with sessions.begin() as session:
                    row = session.get(KeyRow, key_id)
                    if row is None:
                        session.add(
                            KeyRow(
                                id=key_id,
                                name=KEY_NAME,
                                scope="admin",
                                models=None,
                                key_hash=digest,
                                created_at=utc_now(),
                            )
                        )
                        return "created"
                    if not hmac.compare_digest(row.key_hash, digest):
                        raise BootstrapError(
                            f"the catalog has another key with id {key_id}: "
                            f"choose a new {ADMIN_KEY_ENV}"
                        )
                    if row.scope != "admin":
                        raise BootstrapError(f"key {key_id} is in the catalog as {row.scope!r}")
                    return "present" if row.revoked_at is None else "revoked"
            except IntegrityError:
                continue
        raise BootstrapError(f"could not store key {key_id}")
    finally:
        engine.dispose()


def main(argv: Sequence[str]) -> int:
    command = list(argv) or ["lmaas", "serve", "--host", "0.0.0.0"]
    plaintext = os.environ.get(ADMIN_KEY_ENV, "").strip()
    if plaintext:
        try:
            check_format(plaintext)  # before the settings: a placeholder says so first
            outcome = import_admin_key(plaintext, catalog_url(command))
        except BootstrapError as exc:
            print(f"entrypoint: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            # Settings errors say what is wrong; a database error's text may hold the URL and
            # its password, so only its type is named.
            from sqlalchemy.exc import SQLAlchemyError

            what = type(exc).__name__ if isinstance(exc, SQLAlchemyError) else str(exc)
            print(f"entrypoint: cannot import {ADMIN_KEY_ENV}: {what}", file=sys.stderr)
            return 2
        key_id = check_format(plaintext)
        messages = {
            "created": f"admin key {key_id} ({KEY_NAME}) stored from {ADMIN_KEY_ENV}",
            "present": f"admin key {key_id} from {ADMIN_KEY_ENV} is in the catalog",
            "revoked": f"admin key {key_id} from {ADMIN_KEY_ENV} is revoked: it stays revoked",
        }
        print(f"entrypoint: {messages[outcome]}", file=sys.stderr)
    os.execvp(command[0], command)
    return 0  # not reached: execvp replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
