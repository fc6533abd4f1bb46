"""Open the model store of a settings object: database, migrations, recovery, shipped models."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from lmaas.config import Settings
from lmaas.registry.blobs import BlobStore
from lmaas.registry.catalog import Catalog
from lmaas.registry.db import create_db_engine, database_url, session_factory, upgrade_to_head
from lmaas.registry.deployments import DeploymentStore
from lmaas.registry.keys import KeyStore
from lmaas.registry.store import ModelStore
from lmaas.tasks.records import TaskStore


@dataclass
class Registry:
    engine: Engine
    store: ModelStore
    keys: KeyStore
    tasks: TaskStore
    deployments: DeploymentStore

    def close(self) -> None:
        self.engine.dispose()


def open_registry(settings: Settings) -> Registry:
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
    )
    store.recover()
    store.ensure_shipped()
    return Registry(
        engine, store, KeyStore(sessions), TaskStore(sessions), DeploymentStore(sessions)
    )
