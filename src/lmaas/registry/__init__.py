"""The model store: content-addressed blobs (``blobs``), GGUF metadata (``gguf``), the SQL
catalog of models, versions and aliases (``catalog``), its database setup (``db``) and Alembic
migrations (``migrations/``).

Import the submodules directly; this package imports nothing so a worker that only needs the
GGUF reader does not load SQLAlchemy.
"""
