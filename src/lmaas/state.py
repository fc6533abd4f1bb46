"""Open the model store of a settings object: database, migrations, recovery, shipped models."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from lmaas.config import Settings
from lmaas.controller.specs import DeploymentStore
from lmaas.db import create_db_engine, database_url, session_factory, upgrade_to_head
from lmaas.jobs.eval_store import EvalStore
from lmaas.jobs.store import JobStore
from lmaas.keys import KeyStore
from lmaas.records.store import RecordStore
from lmaas.store.blobs import BlobStore
from lmaas.store.catalog import Catalog
from lmaas.store.evaluations import Evaluations
from lmaas.store.files import FileLimits, FileStore
from lmaas.store.model_store import ModelStore


@dataclass
class State:
    engine: Engine
    store: ModelStore
    keys: KeyStore
    records: RecordStore
    deployments: DeploymentStore
    files: FileStore
    jobs: JobStore
    evals: EvalStore
    evaluations: Evaluations

    def close(self) -> None:
        self.engine.dispose()


def open_state(settings: Settings) -> State:
    """The store and the keys, migrated to the newest schema and recovered from any crash.

    On first start the shipped models are imported, so a fresh server lists them.
    """
    home = settings.home_dir
    home.mkdir(parents=True, exist_ok=True)
    url = settings.database_url or database_url(home)
    engine = create_db_engine(url)
    upgrade_to_head(engine)
    sessions = session_factory(engine)
    store = ModelStore(
        Catalog(sessions),
        BlobStore(home),
        max_upload_bytes=settings.limits.max_upload_bytes,
        max_archive_members=settings.limits.max_archive_members,
        max_member_bytes=settings.limits.max_member_bytes,
        max_expansion_ratio=settings.limits.max_expansion_ratio,
    )
    store.recover(rehash=settings.verify_blob_hashes)
    store.ensure_shipped()
    files = FileStore(
        sessions,
        store,
        FileLimits(
            max_bytes=settings.files.max_bytes, max_line_bytes=settings.files.max_line_bytes
        ),
    )
    return State(
        engine,
        store,
        KeyStore(sessions),
        RecordStore(sessions),
        DeploymentStore(sessions),
        files,
        JobStore(sessions),
        EvalStore(sessions),
        Evaluations(sessions),
    )
