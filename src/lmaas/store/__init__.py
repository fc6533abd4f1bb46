"""The model store: content-addressed blobs (``blobs``), the file formats it reads and checks
(``gguf``, ``safetensors_header``, ``archive``, ``folder``, ``hf``), the SQL catalog of models,
versions and aliases (``catalog``), folders materialised for serving (``materialize``) and the
facade that ties them together (``model_store.ModelStore``).

The database engine and its migrations live in :mod:`lmaas.db`; API keys in :mod:`lmaas.keys`;
deployment specs in :mod:`lmaas.controller.specs`.

Import the submodules directly; this package imports nothing so a worker that only needs the
GGUF reader does not load SQLAlchemy.
"""
