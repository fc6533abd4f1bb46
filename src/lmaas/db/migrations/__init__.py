"""Alembic migrations of the catalog; run them with :func:`lmaas.db.upgrade_to_head`."""
