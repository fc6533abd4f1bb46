"""Check a safetensors file's header without loading tensors (and without torch).

Layout: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON mapping tensor names
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (plus an optional ``__metadata__`` map of
strings), then the tensor data. The check accepts what the reference loader accepts: ``n`` is
bounded by the file and a cap before anything is read, each tensor's byte length matches its
dtype and shape, and the tensors tile the data section exactly (no gaps, overlaps or tail).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from lmaas.errors import InvalidRequestError

MAX_HEADER_BYTES: Final = 16 << 20
MAX_DIMS: Final = 16
METADATA_KEY: Final = "__metadata__"

# Bits per element of every dtype the reference implementation knows.
DTYPE_BITS: Final[dict[str, int]] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


@dataclass(frozen=True, slots=True)
class SafetensorsSummary:
    tensor_count: int
    parameter_count: int
    dtypes: frozenset[str]


def _invalid(name: str, reason: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{name!r} is not a valid safetensors file: {reason}",
        param="file",
        code="invalid_model_file",
    )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(file: BinaryIO, size: int, name: str = "model.safetensors") -> SafetensorsSummary:
    """Validate the header of the ``size``-byte safetensors file open at its start.

    Raises ``InvalidRequestError`` naming ``name`` if anything is out of bounds or malformed.
    """
    if size < 8:
        raise _invalid(name, "shorter than its 8-byte header length")
    length = int.from_bytes(file.read(8), "little")
    if length < 2 or length > size - 8:
        raise _invalid(name, "the header length does not fit in the file")
    if length > MAX_HEADER_BYTES:
        raise _invalid(name, f"the header is larger than {MAX_HEADER_BYTES} bytes")
    raw = file.read(length)
    if len(raw) != length or raw[:1] != b"{":
        raise _invalid(name, "the header is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError):
        raise _invalid(name, "the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _invalid(name, "the header is not a JSON object")
    return _check_tensors(header, size - 8 - length, name)


def _check_tensors(  # noqa: C901 - one check per header field
    header: dict[str, Any], data_len: int, name: str
) -> SafetensorsSummary:
    spans: list[tuple[int, int]] = []
    parameters = 0
    dtypes: set[str] = set()
    for tensor, spec in header.items():
        if tensor == METADATA_KEY:
            if not isinstance(spec, dict) or not all(isinstance(v, str) for v in spec.values()):
                raise _invalid(name, "__metadata__ must map strings to strings")
            continue
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
            raise _invalid(name, f"tensor {tensor[:100]!r} needs exactly dtype, shape, offsets")
        dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if dtype not in DTYPE_BITS:
            raise _invalid(name, f"tensor {tensor[:100]!r} has an unknown dtype")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(map(_is_count, shape)):
            raise _invalid(name, f"tensor {tensor[:100]!r} has a bad shape")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets)):
            raise _invalid(name, f"tensor {tensor[:100]!r} has bad data_offsets")
        begin, end = offsets
        if not begin <= end <= data_len:
            raise _invalid(name, f"tensor {tensor[:100]!r} lies outside the file")
        elements = math.prod(shape)
        bits = elements * DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - begin:
            raise _invalid(name, f"tensor {tensor[:100]!r} does not match its dtype and shape")
        spans.append((begin, end))
        parameters += elements
        dtypes.add(dtype)
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise _invalid(name, "tensors overlap or leave gaps in the data")
        position = end
    if position != data_len:
        raise _invalid(name, "bytes after the last tensor")
    return SafetensorsSummary(len(spans), parameters, frozenset(dtypes))
