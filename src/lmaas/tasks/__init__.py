"""Task records: one row per inference request, written in batches off the request path.

See :mod:`lmaas.tasks.records` for the record type, the ``tasks`` table, :class:`TaskStore` (the
synchronous database API) and :class:`TaskRecorder` (the asynchronous batch writer).
"""
