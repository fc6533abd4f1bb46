"""Small Hugging Face folders and the archives they travel in, friendly and hostile, for the
store's tests. The weights are written by the reference safetensors library."""

from __future__ import annotations

import io
import json
import stat
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import save

# A real (if tiny) BERT configuration, as transformers writes it.
CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 8,
    "initializer_range": 0.02,
    "intermediate_size": 16,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 64,
    "model_type": "bert",
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 6,
}
VOCAB = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\n"
TENSORS = {
    "embeddings.word_embeddings.weight": np.arange(48, dtype=np.float32).reshape(6, 8),
    "embeddings.position_embeddings.weight": np.zeros((64, 8), dtype=np.float32),
    "pooler.dense.bias": np.ones(8, dtype=np.float32),
}
PARAMETERS = 48 + 64 * 8 + 8


def weights(tensors: Mapping[str, np.ndarray] | None = None) -> bytes:
    return save(dict(TENSORS if tensors is None else tensors), metadata={"format": "pt"})


def folder_files() -> dict[str, bytes]:
    """A sentence-transformers folder: config, tokenizer files, weights and a pooling module."""
    return {
        "config.json": json.dumps(CONFIG, indent=2).encode(),
        "tokenizer_config.json": json.dumps({"do_lower_case": True}).encode(),
        "special_tokens_map.json": json.dumps({"pad_token": "[PAD]"}).encode(),
        "vocab.txt": VOCAB.encode(),
        "model.safetensors": weights(),
        "modules.json": json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "Pooling"},
            ]
        ).encode(),
        "1_Pooling/config.json": json.dumps({"word_embedding_dimension": 8}).encode(),
    }


def write_folder(directory: Path, files: Mapping[str, bytes]) -> Path:
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory


def tar_bytes(files: Mapping[str, bytes], *, gz: bool = False, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_with(*members: tarfile.TarInfo, files: Mapping[str, bytes] | None = None) -> bytes:
    """A tar of the friendly ``files`` followed by hand-made (hostile) member headers."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.size else None)
    return buffer.getvalue()


def tar_member(
    name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", size: int = 0
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size
    return info


def zip_bytes(
    files: Mapping[str, bytes], *, modes: Mapping[str, int] | None = None, deflate: bool = True
) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            info.external_attr = ((modes or {}).get(name, stat.S_IFREG | 0o644)) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def zip_bomb(size: int, *, declared: int | None = None) -> bytes:
    """A folder zip whose weights inflate to ``size`` zero bytes; ``declared`` rewrites the
    size the archive claims for that member (a lying header)."""
    data = zip_bytes({**folder_files(), "big.safetensors": bytes(size)})
    if declared is None:
        return data
    # Patch the uncompressed size in the local header and the central directory entry.
    patched = bytearray(data)
    name = b"big.safetensors"
    for signature, size_offset, name_offset in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (at := patched.find(signature, start)) >= 0:
            if patched[at + name_offset : at + name_offset + len(name)] == name:
                patched[at + size_offset : at + size_offset + 4] = declared.to_bytes(4, "little")
            start = at + 4
    return bytes(patched)


def multipart_body(files: Mapping[str, bytes], boundary: str = "lmaas-test-boundary") -> bytes:
    parts = []
    for name, data in files.items():
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()
