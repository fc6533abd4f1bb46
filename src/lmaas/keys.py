"""API keys: only a SHA-256 hash of each key is stored; the plaintext is shown once, at creation.

A key reads ``lmaas-<id>-<secret>``: ``id`` is 12 lowercase hex characters, public, and the
primary key of its row (so a lookup never scans); ``secret`` is ``secrets.token_urlsafe(32)``.
The row keeps ``sha256(key)`` and verification compares hashes with :func:`hmac.compare_digest`.

:class:`KeyStore` is the only API. It answers :meth:`KeyStore.verify` and
:meth:`KeyStore.count_active` from a short-lived in-memory cache so most requests do not touch
the database, which also bounds how long a key revoked by another process (``lmaas keys
revoke``) stays usable: at most the cache TTL.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal, cast

from sqlalchemy import JSON, CheckConstraint, DateTime, Integer, String, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from lmaas.db import Base, as_utc, utc_now
from lmaas.errors import AuthenticationError, InvalidRequestError, NotFoundError
from lmaas.names import is_served_name

Scope = Literal["admin", "inference"]
SCOPES: Final = ("admin", "inference")

KEY_PREFIX: Final = "lmaas"
KEY_ID_RE: Final = re.compile(r"[0-9a-f]{12}")
# token_urlsafe(32) is 43 characters of the URL-safe base64 alphabet.
KEY_RE: Final = re.compile(r"lmaas-(?P<id>[0-9a-f]{12})-(?P<secret>[A-Za-z0-9_-]{43})")
MAX_NAME: Final = 128
MAX_MODELS: Final = 256
LAST_USED_RESOLUTION: Final = timedelta(minutes=1)
DEFAULT_CACHE_TTL: Final = 5.0
MAX_RATE: Final = 2**31 - 1
MAX_CACHED_KEYS: Final = 4096


class KeyRow(Base):
    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("scope IN ('admin', 'inference')", name="scope"),)

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME))
    scope: Mapped[str] = mapped_column(String(16))
    # NULL: every model; otherwise a JSON list of model names.
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # NULL: no limit; otherwise requests / tokens per minute (see gateway/ratelimit.py).
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """Everything about a key except the key itself (safe to log and to show)."""

    id: str
    name: str
    scope: Scope
    models: tuple[str, ...] | None  # None: every model
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    rpm: int | None = None  # requests per minute; None: unlimited
    tpm: int | None = None  # tokens per minute; None: unlimited

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    def allows_model(self, model: str) -> bool:
        """Whether this key may use ``model``; a key limited to ``name`` also allows
        ``name:alias`` and ``name:3``."""
        if self.models is None:
            return True
        return model in self.models or model.partition(":")[0] in self.models


def hash_key(plaintext: str) -> str:
    """The stored form of a key: SHA-256 hex of the whole key string."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def parse_key(plaintext: str) -> str | None:
    """The id of a well-formed key, else ``None``."""
    match = KEY_RE.fullmatch(plaintext)
    return match.group("id") if match else None


def new_key() -> tuple[str, str]:
    """A fresh ``(id, plaintext)``."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}-{key_id}-{secrets.token_urlsafe(32)}"


def validate_scope(scope: str) -> Scope:
    if scope not in SCOPES:
        raise InvalidRequestError("scope must be 'admin' or 'inference'", param="scope")
    return cast(Scope, scope)


def validate_key_name(name: str) -> str:
    if len(name) > MAX_NAME or not name.isprintable():
        raise InvalidRequestError(
            f"key name must be at most {MAX_NAME} printable characters", param="name"
        )
    return name


def validate_rate(value: int | None, param: str) -> int | None:
    """A per-minute limit: ``None`` (unlimited) or an integer from 1 to :data:`MAX_RATE`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RATE:
        raise InvalidRequestError(
            f"{param} must be an integer from 1 to {MAX_RATE} (leave it out for no limit)",
            param=param,
        )
    return value


def validate_models(models: Sequence[str] | None) -> tuple[str, ...] | None:
    """Deduplicated, sorted model names; ``None`` (every model) stays ``None``."""
    if models is None:
        return None
    if isinstance(models, str):
        raise InvalidRequestError("models must be a list of model names", param="models")
    if not models:
        raise InvalidRequestError(
            "models must name at least one model (leave it out to allow every model)",
            param="models",
        )
    if len(models) > MAX_MODELS:
        raise InvalidRequestError(f"a key may name at most {MAX_MODELS} models", param="models")
    for model in models:
        if not is_served_name(model):
            raise InvalidRequestError(f"invalid model name {model!r}", param="models")
    return tuple(sorted(set(models)))


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _to_info(row: KeyRow) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        name=row.name,
        scope=validate_scope(row.scope),
        models=tuple(row.models) if row.models is not None else None,
        created_at=cast(datetime, _utc(row.created_at)),
        last_used_at=_utc(row.last_used_at),
        revoked_at=_utc(row.revoked_at),
        rpm=row.rpm,
        tpm=row.tpm,
    )


def _invalid_key() -> AuthenticationError:
    # One message for malformed and unknown keys: the answer says nothing about which ids exist.
    return AuthenticationError("invalid API key")


class KeyStore:
    """API keys over ``session_factory`` (see :mod:`lmaas.db`).

    Methods are synchronous (blocking database I/O) and thread-safe; async callers run them in
    a thread, or first try the memory-only :meth:`cached_verify`. ``clock`` (monotonic seconds)
    drives the cache and ``now`` (aware UTC datetimes) the stored timestamps; tests inject both.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._sessions = session_factory
        self._ttl = cache_ttl
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        # key hash -> (info, expiry); holds hashes, never plaintext keys.
        self._verified: dict[str, tuple[KeyInfo, float]] = {}
        self._active: tuple[int, float] | None = None

    def create(
        self,
        scope: str,
        name: str = "",
        models: Sequence[str] | None = None,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
    ) -> tuple[str, KeyInfo]:
        """A new key: ``(plaintext, info)``. The plaintext is not kept anywhere; hand it to the
        user now. ``rpm``/``tpm``: requests/tokens per minute, ``None`` for no limit."""
        scope = validate_scope(scope)
        validate_key_name(name)
        allowed = validate_models(models)
        rpm, tpm = validate_rate(rpm, "rpm"), validate_rate(tpm, "tpm")
        for _ in range(5):  # an id collision (48 random bits) is retried, not reported
            key_id, plaintext = new_key()
            row = KeyRow(
                id=key_id,
                name=name,
                scope=scope,
                models=list(allowed) if allowed is not None else None,
                key_hash=hash_key(plaintext),
                created_at=self._now(),
                rpm=rpm,
                tpm=tpm,
            )
            try:
                with self._sessions.begin() as session:
                    session.add(row)
                    session.flush()
                    info = _to_info(row)
            except IntegrityError:
                continue
            self.invalidate()
            return plaintext, info
        raise RuntimeError("could not allocate a unique API key id")

    def list(self) -> list[KeyInfo]:
        """Every key, revoked ones included, oldest first."""
        with self._sessions.begin() as session:
            rows = session.scalars(select(KeyRow).order_by(KeyRow.created_at, KeyRow.id)).all()
            return [_to_info(row) for row in rows]

    def get(self, key_id: str) -> KeyInfo:
        with self._sessions.begin() as session:
            return _to_info(_find(session, key_id))

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key for good (revoking it again keeps the first time). Other processes
        stop accepting it within the cache TTL; this one at once."""
        with self._sessions.begin() as session:
            row = _find(session, key_id, lock=True)
            if row.revoked_at is None:
                row.revoked_at = self._now()
            session.flush()
            info = _to_info(row)
        self.invalidate()
        return info

    def set_limits(self, key_id: str, *, rpm: int | None, tpm: int | None) -> KeyInfo:
        """Replace a key's requests/tokens per minute (``None``: no limit). Other processes
        apply them within the cache TTL; this one at once."""
        rpm, tpm = validate_rate(rpm, "rpm"), validate_rate(tpm, "tpm")
        with self._sessions.begin() as session:
            row = _find(session, key_id, lock=True)
            row.rpm, row.tpm = rpm, tpm
            session.flush()
            info = _to_info(row)
        self.invalidate()
        return info

    def cached_count_active(self) -> int | None:
        """:meth:`count_active` if known within the TTL; never touches the database."""
        with self._lock:
            cached = self._active
            if cached is not None and cached[1] > self._clock():
                return cached[0]
            return None

    def count_active(self) -> int:
        """How many keys are not revoked (cached for the TTL)."""
        cached = self.cached_count_active()
        if cached is not None:
            return cached
        with self._sessions.begin() as session:
            count = session.scalar(
                select(func.count()).select_from(KeyRow).where(KeyRow.revoked_at.is_(None))
            )
        with self._lock:
            self._active = (int(count or 0), self._clock() + self._ttl)
        return int(count or 0)

    def cached_verify(self, plaintext: str) -> KeyInfo | None:
        """The key's info if it was verified within the TTL; never touches the database."""
        if parse_key(plaintext) is None:
            return None
        digest = hash_key(plaintext)
        with self._lock:
            entry = self._verified.get(digest)
            if entry is None:
                return None
            if entry[1] <= self._clock():
                del self._verified[digest]
                return None
            return entry[0]

    def verify(self, plaintext: str) -> KeyInfo:
        """The info of an active key; :class:`AuthenticationError` for a malformed, unknown or
        revoked one. Records the use (at most once a minute per key)."""
        cached = self.cached_verify(plaintext)
        if cached is not None:
            return cached
        key_id = parse_key(plaintext)
        if key_id is None:
            raise _invalid_key()
        digest = hash_key(plaintext)
        with self._sessions.begin() as session:
            row = session.get(KeyRow, key_id)
            if row is None or not hmac.compare_digest(row.key_hash, digest):
                raise _invalid_key()
            if row.revoked_at is not None:
                raise AuthenticationError("this API key has been revoked", code="api_key_revoked")
            now = self._now()
            last_used = _utc(row.last_used_at)
            if last_used is None or now - last_used >= LAST_USED_RESOLUTION:
                row.last_used_at = now
                session.flush()
            info = _to_info(row)
        self._remember(digest, info)
        return info

    def invalidate(self) -> None:
        """Forget every cached answer (done after each create and revoke)."""
        with self._lock:
            self._verified.clear()
            self._active = None

    def _remember(self, digest: str, info: KeyInfo) -> None:
        with self._lock:
            if len(self._verified) >= MAX_CACHED_KEYS:
                now = self._clock()
                self._verified = {d: e for d, e in self._verified.items() if e[1] > now}
                if len(self._verified) >= MAX_CACHED_KEYS:
                    self._verified.clear()
            self._verified[digest] = (info, self._clock() + self._ttl)


def _find(session: Session, key_id: str, *, lock: bool = False) -> KeyRow:
    row = (
        session.get(KeyRow, key_id, with_for_update=lock)
        if isinstance(key_id, str) and KEY_ID_RE.fullmatch(key_id)
        else None
    )
    if row is None:
        raise NotFoundError(f"API key {key_id!r} does not exist", code="api_key_not_found")
    return row
