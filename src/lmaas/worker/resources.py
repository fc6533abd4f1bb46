"""What a worker measures of itself once its model is loaded, for the gateway's resource pool
(``lmaas.controller.pool``): its own resident memory without its KV cache, and the KV cache's
bytes per context token. Both go to the gateway in ``ModelInfo`` (the ready frame).

"Its own" memory is the process's anonymous resident pages (``RssAnon``): Python, the model
library, buffers, and the weights when the library copies them (transformers). The pages of a
file mapped read-only (llama.cpp's GGUF weights, shared libraries) are left out: the page cache
holds them once for every process mapping them, and the pool counts a model file once per
machine. llama.cpp allocates and clears its whole KV cache when the context is made, so its
share is taken off; transformers grows its cache as sequences run, so nothing is.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

_F16 = 2  # bytes per KV element: llama.cpp's default cache type


def private_bytes(status: Path = Path("/proc/self/status")) -> int | None:
    """This process's anonymous resident memory in bytes (None where /proc has no RssAnon)."""
    try:
        text = status.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "RssAnon":
            return int(value.split()[0]) * 1024  # kB
    return None


def llama_kv_bytes_per_token(model: Any) -> int:
    """KV bytes per context cell of a loaded llama.cpp model (f16 K and V in every layer)."""
    import llama_cpp

    n_layer = int(llama_cpp.llama_model_n_layer(model))
    n_head = max(1, int(llama_cpp.llama_model_n_head(model)))
    n_head_kv = int(llama_cpp.llama_model_n_head_kv(model))
    head = int(llama_cpp.llama_model_n_embd(model)) // n_head
    arch = _meta(model, "general.architecture")
    key = _meta_int(model, f"{arch}.attention.key_length") or head
    value = _meta_int(model, f"{arch}.attention.value_length") or head
    return n_layer * n_head_kv * (key + value) * _F16


def _meta(model: Any, key: str) -> str | None:
    import llama_cpp

    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode(errors="replace") if n >= 0 else None


def _meta_int(model: Any, key: str) -> int | None:
    text = _meta(model, key)
    return int(text) if text is not None and text.isdigit() else None


def hf_kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """KV bytes per token of a transformers causal model with Hugging Face ``config``."""
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    if not layers or not heads:
        return 0
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or getattr(config, "hidden_size", 0) // heads)
    return layers * kv_heads * head_dim * 2 * dtype_bytes


def measurement(kv_bytes_per_token: int | None, preallocated_tokens: int) -> dict[str, int]:
    """The ``ModelInfo`` fields: ``memory_bytes`` (own memory less a KV cache allocated for
    ``preallocated_tokens`` at load) and ``kv_bytes_per_token``; empty without /proc."""
    private = private_bytes()
    if private is None:
        return {}
    kv = kv_bytes_per_token or 0
    facts = {"memory_bytes": max(0, private - kv * preallocated_tokens)}
    if kv_bytes_per_token is not None:
        facts["kv_bytes_per_token"] = kv_bytes_per_token
    return facts
