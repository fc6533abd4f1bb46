"""Request records: one row per inference request (who called what, when, how it went),
written in batches off the request path.

See :mod:`lmaas.records.store` for the record type, the ``request_records`` table,
:class:`RecordStore` (the synchronous database API) and :class:`RecordWriter` (the asynchronous
batch writer). "Task" elsewhere in the code means the worker's non-generation work (embed,
classify, score, tokenize), never a record.
"""
