"""The llama.cpp backend (GGUF files, through llama-cpp-python's low-level API).

- ``generate``: ``LlamaCppBackend``, the model and one context of many sequence slots that the
  step loop (``lmaas.worker.loop``) generates with;
- ``tasks``: ``LlamaCppTasks``, what the worker answers beside generation (tokenize,
  detokenize, embed).
"""
