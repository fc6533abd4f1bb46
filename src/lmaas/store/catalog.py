"""The model catalog: models, their immutable numbered versions, movable aliases and blob refs.

The tables (:mod:`lmaas.store.tables`, created only by the Alembic migrations):

- ``models``: one row per model name; ``last_version`` is the highest number ever handed out, so
  a deleted version's number is never reused.
- ``model_versions``: immutable once ready; ``number`` increases per model.
- ``aliases``: ``(model, name) -> version``; ``latest`` always names the newest ready version.
- ``blob_refs``: which blobs each version uses, so a blob shared by versions outlives each one
  (with ``blob_leases``, the blobs uploads in progress use: see :mod:`lmaas.store.refs`).

A version whose blobs were found missing or damaged at start-up is *broken* (its ``error``
says why): it is listed, never served, and ``latest`` skips it.

:class:`Catalog` is the only API: it validates names, runs each operation in one transaction
(locking the model row so concurrent writers of one model serialize) and returns plain frozen
dataclasses, never ORM objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Final, Literal

from sqlalchemy import delete, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Select

from lmaas.db import as_utc, utc_now
from lmaas.errors import ConflictError, InvalidRequestError, NotFoundError
from lmaas.names import is_alias, is_store_model_name
from lmaas.store.blobs import normalize_digest
from lmaas.store.gguf import GGUFMetadata, kv_bytes_per_token
from lmaas.store.refs import BlobRefs
from lmaas.store.tables import AliasRow, BlobRefRow, ModelRow, VersionRow

LATEST: Final = "latest"
MAX_DESCRIPTION: Final = 4096
MAX_SOURCE: Final = 2048

Format = Literal["gguf", "hf"]
State = Literal["ready", "pending", "broken"]
FORMATS: Final = ("gguf", "hf")
STATES: Final = ("ready", "pending")


@dataclass(frozen=True, slots=True)
class VersionMetadata:
    """What a caller knows about a new version's content."""

    format: Format
    size_bytes: int
    architecture: str | None = None
    parameter_count: int | None = None
    context_length: int | None = None
    quantization: str | None = None
    source: str = ""
    description: str = ""
    kv_bytes_per_token: int | None = None  # from the model's metadata, when it tells

    @classmethod
    def from_gguf(
        cls, meta: GGUFMetadata, *, size_bytes: int, source: str = "", description: str = ""
    ) -> VersionMetadata:
        return cls(
            format="gguf",
            size_bytes=size_bytes,
            architecture=meta.architecture,
            parameter_count=meta.parameter_count,
            context_length=meta.context_length,
            quantization=meta.quantization,
            source=source,
            description=description,
            kv_bytes_per_token=kv_bytes_per_token(meta.metadata),
        )


@dataclass(frozen=True, slots=True)
class StoredModel:
    name: str
    description: str
    created_at: datetime
    latest: int | None  # number of the version `latest` points at
    aliases: dict[str, int]  # alias -> version number


@dataclass(frozen=True, slots=True)
class VersionInfo:
    model: str
    number: int
    format: Format
    architecture: str | None
    parameter_count: int | None
    context_length: int | None
    quantization: str | None
    size_bytes: int
    digest: str
    source: str
    description: str
    created_at: datetime
    state: State
    aliases: tuple[str, ...]
    error: str | None = None  # why a broken version is broken
    # For the resource pool: a loaded replica's own memory without its KV cache (measured by
    # its worker; None before one loaded) and the KV cache's bytes per context token.
    memory_bytes: int | None = None
    kv_bytes_per_token: int | None = None
    profile_json: str | None = None  # what `lmaas profile` measured (protocol.plan.ProfileBody)


def validate_model_name(name: str) -> str:
    if not is_store_model_name(name):
        raise InvalidRequestError(
            "model name must be 1-128 characters of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit",
            param="name",
            code="invalid_model_name",
        )
    return name


def validate_alias(alias: str) -> str:
    if not is_alias(alias):
        raise InvalidRequestError(
            "alias must be 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter",
            param="alias",
            code="invalid_alias",
        )
    return alias


def parse_reference(reference: str) -> tuple[str, int | str]:
    """Split ``name``, ``name:alias`` or ``name:3`` into a model name and a version reference
    (``latest`` when none is given)."""
    name, colon, ref = reference.partition(":")
    validate_model_name(name)
    return name, _version_ref(ref) if colon else LATEST


def _version_ref(ref: int | str) -> int | str:
    if isinstance(ref, int) and not isinstance(ref, bool):
        return ref
    if isinstance(ref, str) and ref.isascii() and ref.isdigit() and len(ref) <= 9:
        return int(ref)
    return validate_alias(ref)  # type: ignore[arg-type]


def _check_metadata(meta: VersionMetadata) -> None:
    if meta.format not in FORMATS:
        raise InvalidRequestError("format must be 'gguf' or 'hf'", param="format")
    for field in ("size_bytes", "parameter_count", "context_length", "kv_bytes_per_token"):
        value = getattr(meta, field)
        if value is not None and (not isinstance(value, int) or value < 0 or value >= 1 << 63):
            raise InvalidRequestError(f"{field} must be a non-negative integer", param=field)
    for field, limit in (("architecture", 128), ("quantization", 32)):
        value = getattr(meta, field)
        if value is not None and len(value) > limit:
            raise InvalidRequestError(f"{field} is longer than {limit} characters", param=field)
    if len(meta.source) > MAX_SOURCE:
        raise InvalidRequestError(f"source is longer than {MAX_SOURCE} characters", param="source")
    _check_description(meta.description)


def _check_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidRequestError(
            f"description is longer than {MAX_DESCRIPTION} characters", param="description"
        )


class Catalog:
    """Models, versions and aliases over ``session_factory`` (see :mod:`lmaas.db`).

    Methods are synchronous (blocking database I/O); async callers run them in a thread.
    Methods that drop versions return the digests no version references any more, for the
    caller to delete from the blob store.
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory
        self.refs = BlobRefs(session_factory)

    # -- models ---------------------------------------------------------------------------------

    def create_model(self, name: str, description: str = "") -> StoredModel:
        validate_model_name(name)
        _check_description(description)
        try:
            with self._sessions.begin() as session:
                if session.scalar(select(exists().where(ModelRow.name == name))):
                    raise _model_exists(name)
                row = ModelRow(name=name, description=description, last_version=0)
                row.created_at = utc_now()
                session.add(row)
                session.flush()
                return self._stored_model(session, row)
        except IntegrityError:  # a concurrent create of the same name won
            raise _model_exists(name) from None

    def list_models(self) -> list[StoredModel]:
        with self._sessions.begin() as session:
            rows = session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            aliases = self._aliases_by_model(session, None)
            return [_to_stored_model(row, aliases.get(row.id, {})) for row in rows]

    def get_model(self, name: str) -> StoredModel:
        with self._sessions.begin() as session:
            return self._stored_model(session, _find_model(session, name))

    def delete_model(self, name: str) -> list[str]:
        """Delete a model with all its versions and aliases."""
        with self._sessions.begin() as session:
            model = _find_model(session, name, lock=True)
            version_ids = select(VersionRow.id).where(VersionRow.model_id == model.id)
            digests = _digests_of(session, version_ids)
            session.execute(delete(AliasRow).where(AliasRow.model_id == model.id))
            session.execute(delete(BlobRefRow).where(BlobRefRow.version_id.in_(version_ids)))
            session.execute(delete(VersionRow).where(VersionRow.model_id == model.id))
            session.execute(delete(ModelRow).where(ModelRow.id == model.id))
            return _unreferenced(session, digests)

    # -- versions -------------------------------------------------------------------------------

    def add_version(
        self,
        model: str,
        metadata: VersionMetadata,
        digest: str,
        *,
        blobs: Iterable[str] = (),
        state: State = "ready",
        moves_latest: bool = True,
    ) -> VersionInfo:
        """Record a new version with the next number; a ready one becomes ``latest`` (unless
        ``moves_latest`` is False and the model has a ``latest``: a variant of an existing
        version, such as a quantization, leaves what follows ``latest`` where it is).

        ``digest`` is the version's content (the GGUF file, or for a Hugging Face folder the
        blob listing its files); ``blobs`` are further blobs it uses (each file of the folder).
        A ``pending`` version (an upload still being processed) gets its number now and is
        made ready with :meth:`mark_ready`, or dropped by :meth:`sweep_pending`.
        """
        _check_metadata(metadata)
        if state not in STATES:
            raise InvalidRequestError("state must be 'ready' or 'pending'", param="state")
        refs = {normalize_digest(digest)} | {normalize_digest(d) for d in blobs}
        with self._sessions.begin() as session:
            row = _find_model(session, model, lock=True)
            row.last_version += 1
            version = VersionRow(
                model_id=row.id,
                number=row.last_version,
                digest=normalize_digest(digest),
                state=state,
                created_at=utc_now(),
                **asdict(metadata),  # its fields are the metadata columns
            )
            session.add(version)
            session.flush()
            session.add_all(BlobRefRow(version_id=version.id, digest=d) for d in sorted(refs))
            has_latest = session.get(AliasRow, (row.id, LATEST)) is not None
            if state == "ready" and (moves_latest or not has_latest):
                _point_alias(session, row.id, LATEST, version.id)
            session.flush()
            return self._version_info(session, model, version)

    def mark_ready(self, model: str, number: int) -> VersionInfo:
        """Make a pending version ready; ``latest`` moves to it if it is the newest ready one."""
        with self._sessions.begin() as session:
            row = _find_model(session, model, lock=True)
            version = _find_version(session, row, number)
            if version.state != "ready":
                version.state = "ready"
                newest = _newest_ready(session, row.id)
                if newest is not None and newest.id == version.id:
                    _point_alias(session, row.id, LATEST, version.id)
            session.flush()
            return self._version_info(session, model, version)

    def list_versions(self, model: str) -> list[VersionInfo]:
        with self._sessions.begin() as session:
            row = _find_model(session, model)
            versions = session.scalars(
                select(VersionRow).where(VersionRow.model_id == row.id).order_by(VersionRow.number)
            ).all()
            by_version = _alias_names(session, row.id)
            return [_to_version_info(model, v, by_version.get(v.id, ())) for v in versions]

    def get_version(
        self, model: str, ref: int | str = LATEST, *, broken_ok: bool = False
    ) -> VersionInfo:
        """A version by number (``3`` or ``"3"``) or by alias (``"latest"``, ``"production"``).

        A broken version is refused (``ConflictError``, code ``version_broken``) unless
        ``broken_ok``: what is returned by default may be served and downloaded.
        """
        with self._sessions.begin() as session:
            row = _find_model(session, model)
            version = _find_version(session, row, ref)
            if version.error is not None and not broken_ok:
                raise _broken(model, version)
            return self._version_info(session, model, version)

    def set_error(self, model: str, number: int, error: str | None) -> VersionInfo:
        """Mark a version broken (``error`` says why) or, with ``None``, intact again;
        ``latest`` moves to the newest ready version that is not broken."""
        with self._sessions.begin() as session:
            row = _find_model(session, model, lock=True)
            version = _find_version(session, row, number)
            version.error = error[:MAX_DESCRIPTION] if error is not None else None
            session.flush()
            _move_latest(session, row.id)
            session.flush()
            return self._version_info(session, model, version)

    def set_memory(
        self, model: str, number: int, *, memory_bytes: int, kv_bytes_per_token: int | None
    ) -> None:
        """Keep what a loaded replica of the version measured (a version is otherwise
        immutable: this describes how it runs, not its content)."""
        with self._sessions.begin() as session:
            version = _find_version(session, _find_model(session, model), number)
            version.memory_bytes = max(0, memory_bytes)
            if kv_bytes_per_token is not None:
                version.kv_bytes_per_token = max(0, kv_bytes_per_token)

    def set_profile(self, model: str, number: int, profile_json: str) -> None:
        """Keep a replica's measured profile with the version (for the capacity planner)."""
        with self._sessions.begin() as session:
            _find_version(session, _find_model(session, model), number).profile_json = profile_json

    def resolve(self, reference: str) -> VersionInfo:
        """The version a ``name[:alias|number]`` reference names (``latest`` by default)."""
        name, ref = parse_reference(reference)
        return self.get_version(name, ref)

    def delete_version(self, model: str, number: int) -> list[str]:
        """Delete one version. Refused while an alias other than ``latest`` points at it;
        ``latest`` moves to the newest remaining ready version (or goes when none is left)."""
        with self._sessions.begin() as session:
            row = _find_model(session, model, lock=True)
            version = _find_version(session, row, number)
            held_by = [a for a in _alias_names(session, row.id).get(version.id, ()) if a != LATEST]
            if held_by:
                raise ConflictError(
                    f"version {version.number} of {model!r} is pointed at by alias(es) "
                    f"{', '.join(sorted(held_by))}; move or delete them first",
                    code="version_has_aliases",
                )
            return self._drop_versions(session, row, [version])

    def sweep_pending(self) -> list[str]:
        """Delete every pending version (left by an interrupted upload); call at start-up."""
        with self._sessions.begin() as session:
            pending = session.scalars(select(VersionRow).where(VersionRow.state == "pending")).all()
            digests: list[str] = []
            for model_id in sorted({v.model_id for v in pending}):
                row = session.get_one(ModelRow, model_id, with_for_update=True)
                mine = [v for v in pending if v.model_id == model_id]
                digests.extend(self._drop_versions(session, row, mine))
            return sorted(set(digests))

    # -- aliases --------------------------------------------------------------------------------

    def set_alias(self, model: str, alias: str, ref: int | str) -> VersionInfo:
        """Point ``alias`` at a ready version (by number or by another alias)."""
        validate_alias(alias)
        if alias == LATEST:
            raise InvalidRequestError(
                "'latest' always points at the newest version and cannot be set",
                param="alias",
                code="alias_reserved",
            )
        with self._sessions.begin() as session:
            row = _find_model(session, model, lock=True)
            version = _find_version(session, row, ref)
            if version.error is not None:
                raise _broken(model, version)
            if version.state != "ready":
                raise ConflictError(
                    f"version {version.number} of {model!r} is not ready yet",
                    code="version_not_ready",
                )
            _point_alias(session, row.id, alias, version.id)
            session.flush()
            return self._version_info(session, model, version)

    def delete_alias(self, model: str, alias: str) -> None:
        validate_alias(alias)
        if alias == LATEST:
            raise InvalidRequestError(
                "'latest' cannot be deleted; it moves when versions are added or deleted",
                param="alias",
                code="alias_reserved",
            )
        with self._sessions.begin() as session:
            row = _find_model(session, model, lock=True)
            deleted = session.execute(
                delete(AliasRow).where(AliasRow.model_id == row.id, AliasRow.name == alias)
            )
            if deleted.rowcount == 0:  # type: ignore[attr-defined]
                raise _alias_not_found(model, alias)

    # -- helpers --------------------------------------------------------------------------------

    def _drop_versions(
        self, session: Session, model: ModelRow, versions: Sequence[VersionRow]
    ) -> list[str]:
        ids = [v.id for v in versions]
        digests = _digests_of(session, ids)
        session.execute(delete(AliasRow).where(AliasRow.version_id.in_(ids)))
        session.execute(delete(BlobRefRow).where(BlobRefRow.version_id.in_(ids)))
        session.execute(delete(VersionRow).where(VersionRow.id.in_(ids)))
        _move_latest(session, model.id)
        return _unreferenced(session, digests)

    def _stored_model(self, session: Session, row: ModelRow) -> StoredModel:
        return _to_stored_model(row, self._aliases_by_model(session, row.id).get(row.id, {}))

    @staticmethod
    def _aliases_by_model(session: Session, model_id: int | None) -> dict[int, dict[str, int]]:
        query = select(AliasRow.model_id, AliasRow.name, VersionRow.number).join(
            VersionRow, VersionRow.id == AliasRow.version_id
        )
        if model_id is not None:
            query = query.where(AliasRow.model_id == model_id)
        result: dict[int, dict[str, int]] = {}
        for owner, name, number in session.execute(query.order_by(AliasRow.name)):
            result.setdefault(owner, {})[name] = number
        return result

    @staticmethod
    def _version_info(session: Session, model: str, version: VersionRow) -> VersionInfo:
        names = _alias_names(session, version.model_id).get(version.id, ())
        return _to_version_info(model, version, names)


def _find_model(session: Session, name: str, *, lock: bool = False) -> ModelRow:
    validate_model_name(name)
    query = select(ModelRow).where(ModelRow.name == name)
    if lock:  # serializes writers of one model (PostgreSQL; SQLite locks the whole database)
        query = query.with_for_update()
    row = session.scalar(query)
    if row is None:
        raise NotFoundError(f"model {name!r} does not exist", param="model")
    return row


def _find_version(session: Session, model: ModelRow, ref: int | str) -> VersionRow:
    ref = _version_ref(ref)
    if isinstance(ref, int):
        query = select(VersionRow).where(VersionRow.model_id == model.id, VersionRow.number == ref)
        what = f"version {ref}"
    else:
        query = (
            select(VersionRow)
            .join(AliasRow, AliasRow.version_id == VersionRow.id)
            .where(AliasRow.model_id == model.id, AliasRow.name == ref)
        )
        what = f"alias {ref!r}"
    version = session.scalar(query)
    if version is None:
        raise NotFoundError(
            f"model {model.name!r} has no {what}", param="version", code="version_not_found"
        )
    return version


def _newest_ready(session: Session, model_id: int) -> VersionRow | None:
    return session.scalar(
        select(VersionRow)
        .where(
            VersionRow.model_id == model_id,
            VersionRow.state == "ready",
            VersionRow.error.is_(None),
        )
        .order_by(VersionRow.number.desc())
        .limit(1)
    )


def _move_latest(session: Session, model_id: int) -> None:
    """``latest`` to the newest ready version that is not broken (gone when there is none)."""
    newest = _newest_ready(session, model_id)
    if newest is not None:
        _point_alias(session, model_id, LATEST, newest.id)
    else:
        session.execute(
            delete(AliasRow).where(AliasRow.model_id == model_id, AliasRow.name == LATEST)
        )


def _point_alias(session: Session, model_id: int, name: str, version_id: int) -> None:
    alias = session.get(AliasRow, (model_id, name))
    if alias is None:
        session.add(
            AliasRow(model_id=model_id, name=name, version_id=version_id, updated_at=utc_now())
        )
    elif alias.version_id != version_id:
        alias.version_id = version_id
        alias.updated_at = utc_now()


def _alias_names(session: Session, model_id: int) -> dict[int, tuple[str, ...]]:
    """Version id -> the names of the aliases pointing at it."""
    names: dict[int, list[str]] = {}
    query = select(AliasRow.version_id, AliasRow.name).where(AliasRow.model_id == model_id)
    for version_id, name in session.execute(query.order_by(AliasRow.name)):
        names.setdefault(version_id, []).append(name)
    return {k: tuple(v) for k, v in names.items()}


def _digests_of(session: Session, version_ids: Iterable[int] | Select[int]) -> set[str]:
    query = select(BlobRefRow.digest).where(BlobRefRow.version_id.in_(version_ids))
    return set(session.scalars(query).all())


def _unreferenced(session: Session, digests: set[str]) -> list[str]:
    """Those of ``digests`` that no remaining version references."""
    if not digests:
        return []
    still = select(BlobRefRow.digest).where(BlobRefRow.digest.in_(digests)).distinct()
    return sorted(digests - set(session.scalars(still).all()))


def _to_stored_model(row: ModelRow, aliases: dict[str, int]) -> StoredModel:
    return StoredModel(
        name=row.name,
        description=row.description,
        created_at=as_utc(row.created_at),
        latest=aliases.get(LATEST),
        aliases=dict(aliases),
    )


def _to_version_info(model: str, v: VersionRow, aliases: Sequence[str]) -> VersionInfo:
    return VersionInfo(
        model=model,
        number=v.number,
        format="hf" if v.format == "hf" else "gguf",
        architecture=v.architecture,
        parameter_count=v.parameter_count,
        context_length=v.context_length,
        quantization=v.quantization,
        size_bytes=v.size_bytes,
        digest=v.digest,
        source=v.source,
        description=v.description,
        created_at=as_utc(v.created_at),
        state="broken" if v.error is not None else "pending" if v.state == "pending" else "ready",
        aliases=tuple(aliases),
        error=v.error,
        memory_bytes=v.memory_bytes,
        kv_bytes_per_token=v.kv_bytes_per_token,
        profile_json=v.profile_json,
    )


def _broken(model: str, version: VersionRow) -> ConflictError:
    return ConflictError(
        f"version {version.number} of {model!r} is broken: {version.error}; "
        "upload it again, or delete it",
        param="version",
        code="version_broken",
    )


def _model_exists(name: str) -> ConflictError:
    return ConflictError(f"model {name!r} already exists", param="name", code="model_exists")


def _alias_not_found(model: str, alias: str) -> NotFoundError:
    return NotFoundError(
        f"model {model!r} has no alias {alias!r}", param="alias", code="alias_not_found"
    )
