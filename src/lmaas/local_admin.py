"""The local admin token: what `lmaas serve` writes under its home so that the `lmaas` commands on
the same machine administer it without a key.

At start the server makes a new random token, writes it to ``<home>/admin.token`` (mode 0600:
only the user running the server can read it) and accepts it as an admin key, from loopback
clients only (``gateway/auth.py``); at exit it removes the file. The CLI sends it when no key
is given and the server URL is a loopback one, so the token never leaves the machine; remote
access needs a real key. It is not stored in the catalog and dies with the server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from lmaas.keys import KeyInfo

TOKEN_FILE: Final = "admin.token"
TOKEN_PREFIX: Final = "lmaas-local-"
# The key a request made with the token counts as (requests records, job owners).
LOCAL_ADMIN: Final = KeyInfo(
    id="local-admin",
    name="local admin token",
    scope="admin",
    models=None,
    created_at=datetime.now(UTC),
    last_used_at=None,
    revoked_at=None,
)


def token_path(home: Path) -> Path:
    return home.expanduser() / TOKEN_FILE


def write_token(home: Path, port: int | None = None) -> str:
    """A new token, written to ``<home>/admin.token`` readable by this user alone (the file is
    made with mode 0600 and moved into place, so no other user ever sees it readable), with the
    server's ``port`` on a second line: the CLI sends the token to that port only, so another
    user's listener on some other loopback port never receives it."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    path = token_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n" + (f"{port}\n" if port is not None else ""))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return token


def read_token(home: Path, port: int | None = None) -> str | None:
    """The token a server on this machine wrote under ``home``, if it is there and readable
    (and, given ``port``, only if the server said it listens there)."""
    try:
        lines = token_path(home).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or not lines[0].startswith(TOKEN_PREFIX):
        return None
    if port is not None and len(lines) > 1 and lines[1] != str(port):
        return None
    return lines[0]


def remove_token(home: Path, token: str) -> None:
    """Remove the file if it still holds ``token`` (another server may have replaced it)."""
    if read_token(home) == token:
        with contextlib.suppress(OSError):
            token_path(home).unlink()
