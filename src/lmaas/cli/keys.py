"""`lmaas keys create|ls|update|revoke`: manage API keys directly in the catalog database.

These commands open the database under ``--home`` (or ``LMAAS_DATABASE_URL``) themselves, so
they work with or without a running server; a running server notices a revoke within its key
cache TTL (seconds), and new rate limits (``update``) within the same TTL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from lmaas.db import (
    DEFAULT_HOME,
    HOME_ENV,
    create_db_engine,
    database_url,
    session_factory,
    upgrade_to_head,
)
from lmaas.errors import LmaasError
from lmaas.keys import KeyInfo, KeyStore

keys_app = typer.Typer(help="Create, list, update and revoke API keys", no_args_is_help=True)

HomeOption = Annotated[
    Path,
    typer.Option(
        "--home",
        envvar=HOME_ENV,
        help="State directory holding the catalog (LMAAS_DATABASE_URL overrides it)",
    ),
]


RpmOption = Annotated[
    int | None,
    typer.Option("--rpm", min=0, help="Requests per minute for this key (0 = no limit)"),
]
TpmOption = Annotated[
    int | None,
    typer.Option(
        "--tpm",
        min=0,
        help="Tokens (prompt + completion) per minute for this key (0 = no limit)",
    ),
]


def _rate(value: int | None) -> int | None:
    return value or None


@contextmanager
def _key_store(home: Path) -> Iterator[KeyStore]:
    """A store over the migrated catalog; database and validation errors end the command."""
    engine = create_db_engine(database_url(home.expanduser()))
    try:
        upgrade_to_head(engine)
        yield KeyStore(session_factory(engine))
    except LmaasError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    except SQLAlchemyError as exc:
        # The exception text may contain the database URL (with a password); keep it out.
        typer.echo(f"error: cannot use the catalog database ({type(exc).__name__})", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()


@keys_app.command("create")
def create(
    scope: Annotated[
        str, typer.Option("--scope", help="admin (manage the server) or inference (use models)")
    ],
    name: Annotated[str, typer.Option("--name", help="What the key is for")] = "",
    models: Annotated[
        list[str] | None,
        typer.Option("--models", help="Limit the key to this model (repeatable) [default: all]"),
    ] = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    home: HomeOption = DEFAULT_HOME,
) -> None:
    """Create a key and print it once on stdout; only its hash is stored."""
    with _key_store(home) as keys:
        plaintext, info = keys.create(scope, name, models or None, rpm=_rate(rpm), tpm=_rate(tpm))
    typer.echo(plaintext)
    typer.echo(
        f"Created {info.scope} key {info.id}"
        + (f" ({info.name})" if info.name else "")
        + ". It is shown only this once: store it now.",
        err=True,
    )


@keys_app.command("ls")
def list_keys(home: HomeOption = DEFAULT_HOME) -> None:
    """List keys (never the keys themselves)."""
    with _key_store(home) as keys:
        infos = keys.list()
    if not infos:
        typer.echo(
            "no API keys; create one with `lmaas keys create --scope admin --name NAME`", err=True
        )
        return
    typer.echo(format_table(infos))


@keys_app.command("update")
def update(
    key_id: Annotated[str, typer.Argument(help="The key's id (the part after 'lmaas-')")],
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    home: HomeOption = DEFAULT_HOME,
) -> None:
    """Change a key's rate limits (a limit left out stays as it is); a running server applies
    them within seconds."""
    with _key_store(home) as keys:
        current = keys.get(key_id)
        info = keys.set_limits(
            key_id,
            rpm=current.rpm if rpm is None else _rate(rpm),
            tpm=current.tpm if tpm is None else _rate(tpm),
        )
    typer.echo(f"key {info.id}: rpm {_limit(info.rpm)}, tpm {_limit(info.tpm)}", err=True)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (the part after 'lmaas-')")],
    home: HomeOption = DEFAULT_HOME,
) -> None:
    """Revoke a key for good; a running server stops accepting it within seconds."""
    with _key_store(home) as keys:
        info = keys.revoke(key_id)
    typer.echo(f"revoked key {info.id} at {_time(info.revoked_at)}", err=True)


HEADERS = ("ID", "NAME", "SCOPE", "MODELS", "RPM", "TPM", "CREATED", "LAST USED", "REVOKED")


def format_table(infos: list[KeyInfo]) -> str:
    rows = [HEADERS] + [
        (
            info.id,
            info.name or "-",
            info.scope,
            ",".join(info.models) if info.models is not None else "*",
            _limit(info.rpm),
            _limit(info.tpm),
            _time(info.created_at),
            _time(info.last_used_at),
            _time(info.revoked_at),
        )
        for info in infos
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _limit(value: int | None) -> str:
    return str(value) if value is not None else "-"


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"
