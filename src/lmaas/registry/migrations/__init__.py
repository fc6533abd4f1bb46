"""Alembic migrations of the catalog; run them with :func:`lmaas.registry.db.upgrade_to_head`."""
