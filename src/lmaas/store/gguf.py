"""A GGUF metadata reader that trusts nothing in the file.

Reads the header, the key/value metadata and the tensor infos of a GGUF v2 or v3 file (either byte
order) through a read-only memory map. Every length and count is checked against the bytes left in
the file and against explicit caps *before* it is used, so a truncated, malformed or hostile file
raises :class:`GGUFError` quickly and without large allocations. Tensor data is never read, but
each tensor's extent is checked to lie inside the file.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

GGUFScalar = int | float | bool | str
GGUFValue = GGUFScalar | list["GGUFValue"]

_MAGIC: Final = b"GGUF"
_SUPPORTED_VERSIONS: Final = (2, 3)
_DEFAULT_ALIGNMENT: Final = 32
MAX_DIMS: Final = 4
MAX_TENSOR_NAME: Final = 256
MAX_ARRAY_DEPTH: Final = 4

# Value type id -> (struct code, size); 8 = string and 9 = array are handled apart.
_SCALAR_TYPES: Final[dict[int, tuple[str, int]]] = {
    0: ("B", 1),  # uint8
    1: ("b", 1),  # int8
    2: ("H", 2),  # uint16
    3: ("h", 2),  # int16
    4: ("I", 4),  # uint32
    5: ("i", 4),  # int32
    6: ("f", 4),  # float32
    7: ("?", 1),  # bool
    10: ("Q", 8),  # uint64
    11: ("q", 8),  # int64
    12: ("d", 8),  # float64
}
_STRING: Final = 8
_ARRAY: Final = 9
# Smallest encoding of one array element of each type: a string is at least its uint64 length,
# an array at least its uint32 type and uint64 count.
_MIN_ELEMENT_SIZE: Final = {**{t: s for t, (_, s) in _SCALAR_TYPES.items()}, _STRING: 8, _ARRAY: 12}


@dataclass(frozen=True, slots=True)
class GGMLType:
    name: str
    block_size: int  # elements per block
    type_size: int  # bytes per block


# ggml tensor types by id (ggml.h), with their block layout, for checking tensor extents.
GGML_TYPES: Final[dict[int, GGMLType]] = {
    i: GGMLType(n, b, s)
    for i, (n, b, s) in {
        0: ("F32", 1, 4),
        1: ("F16", 1, 2),
        2: ("Q4_0", 32, 18),
        3: ("Q4_1", 32, 20),
        6: ("Q5_0", 32, 22),
        7: ("Q5_1", 32, 24),
        8: ("Q8_0", 32, 34),
        9: ("Q8_1", 32, 36),
        10: ("Q2_K", 256, 84),
        11: ("Q3_K", 256, 110),
        12: ("Q4_K", 256, 144),
        13: ("Q5_K", 256, 176),
        14: ("Q6_K", 256, 210),
        15: ("Q8_K", 256, 292),
        16: ("IQ2_XXS", 256, 66),
        17: ("IQ2_XS", 256, 74),
        18: ("IQ3_XXS", 256, 98),
        19: ("IQ1_S", 256, 50),
        20: ("IQ4_NL", 32, 18),
        21: ("IQ3_S", 256, 110),
        22: ("IQ2_S", 256, 82),
        23: ("IQ4_XS", 256, 136),
        24: ("I8", 1, 1),
        25: ("I16", 1, 2),
        26: ("I32", 1, 4),
        27: ("I64", 1, 8),
        28: ("F64", 1, 8),
        29: ("IQ1_M", 256, 56),
        30: ("BF16", 1, 2),
        34: ("TQ1_0", 256, 54),
        35: ("TQ2_0", 256, 66),
        39: ("MXFP4", 32, 17),
    }.items()
}

# llama_ftype values of `general.file_type` (llama.h) and their usual names.
FILE_TYPE_NAMES: Final[dict[int, str]] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}


class GGUFError(ValueError):
    """The file is not a GGUF file this reader accepts; the message says where and why."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]
    type_id: int
    type_name: str
    offset: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.dims)


@dataclass(frozen=True, slots=True)
class GGUFMetadata:
    """What the catalog needs to know about a GGUF file."""

    version: int
    architecture: str | None
    name: str | None
    context_length: int | None
    parameter_count: int
    quantization: str | None
    chat_template: str | None
    tensor_count: int
    # Scalars, strings and short arrays of scalars; long arrays (the vocabulary) are left out and
    # only their lengths kept in ``array_lengths``.
    metadata: dict[str, GGUFValue] = field(repr=False)
    array_lengths: dict[str, int] = field(repr=False)
    tensors: tuple[TensorInfo, ...] = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Limits:
    max_kv: int
    max_string: int
    max_array: int
    max_tensors: int
    keep_array: int


class _Reader:
    """Bounds-checked little/big-endian reads over a buffer."""

    def __init__(self, buf: mmap.mmap | bytes, limits: _Limits) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.order = "<"
        self.limits = limits

    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.remaining():
            raise GGUFError(
                f"truncated file: {what} needs {n} bytes at offset {self.pos}, "
                f"only {self.remaining()} left"
            )

    def scalar(self, code: str, size: int, what: str) -> int | float | bool:
        self.need(size, what)
        (value,) = struct.unpack_from(self.order + code, self.buf, self.pos)
        self.pos += size
        return value  # type: ignore[no-any-return]

    def u32(self, what: str) -> int:
        return int(self.scalar("I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.scalar("Q", 8, what))

    def count(self, what: str, cap: int, min_item_size: int) -> int:
        """A uint64 count, refused if above ``cap`` or if its items cannot fit in the file."""
        n = self.u64(what)
        if n > cap:
            raise GGUFError(f"{what} is {n}, above the limit of {cap}")
        if n * min_item_size > self.remaining():
            raise GGUFError(
                f"{what} is {n} but only {self.remaining()} bytes remain at offset {self.pos}"
            )
        return n

    def string_length(self, what: str) -> int:
        n = self.u64(f"{what} length")
        if n > self.limits.max_string:
            raise GGUFError(
                f"{what} is {n} bytes long, above the limit of {self.limits.max_string}"
            )
        self.need(n, what)
        return n

    def raw_string(self, what: str) -> bytes:
        n = self.string_length(what)
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def string(self, what: str) -> str:
        return self.raw_string(what).decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        n = self.string_length(what)  # advances past the length first
        self.pos += n


def read_gguf_metadata(
    path: Path,
    *,
    max_kv: int = 4096,
    max_string: int = 4 << 20,
    max_array: int = 1 << 22,
    max_tensors: int = 1 << 20,
    keep_array: int = 64,
) -> GGUFMetadata:
    """Parse the metadata of the GGUF file at ``path``.

    ``max_kv``, ``max_tensors``: most metadata entries and tensors accepted. ``max_string``: longest
    string in bytes. ``max_array``: most elements in one array. Arrays of at most ``keep_array``
    scalars are returned in ``metadata``; longer ones are validated and skipped.

    The file is memory-mapped: it must not shrink while being read (a finished blob never does).
    """
    limits = _Limits(max_kv, max_string, max_array, max_tensors, keep_array)
    if not path.is_file():
        raise GGUFError("not a regular file")
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size < 24:
            raise GGUFError(f"file is {size} bytes, too short for a GGUF header")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(_Reader(buf, limits))


def _parse(r: _Reader) -> GGUFMetadata:
    version = _read_header(r)
    tensor_count = r.count("tensor count", r.limits.max_tensors, 8 + 4 + 8 + 4 + 8)
    kv_count = r.count("metadata entry count", r.limits.max_kv, 8 + 4 + 1)
    metadata, array_lengths = _read_kvs(r, kv_count)
    tensors = tuple(_read_tensor_info(r, i) for i in range(tensor_count))
    _check_tensor_data(r, tensors, metadata)
    return _summarize(version, metadata, array_lengths, tensors)


def _read_header(r: _Reader) -> int:
    magic = bytes(r.buf[0:4])
    if magic != _MAGIC:
        raise GGUFError(f"not a GGUF file: magic is {magic!r}, expected {_MAGIC!r}")
    r.pos = 4
    version = r.u32("version")
    if version not in _SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped not in _SUPPORTED_VERSIONS:
            raise GGUFError(f"unsupported GGUF version {version} (supported: 2, 3)")
        r.order, version = ">", swapped
    return version


def _read_kvs(r: _Reader, kv_count: int) -> tuple[dict[str, GGUFValue], dict[str, int]]:
    metadata: dict[str, GGUFValue] = {}
    array_lengths: dict[str, int] = {}
    for index in range(kv_count):
        key = r.string(f"metadata key #{index}")
        if key in metadata or key in array_lengths:
            raise GGUFError(f"metadata key {key!r} appears twice")
        value_type = r.u32(f"type of {key!r}")
        if value_type == _ARRAY:
            value, length = _read_array(r, key, depth=1)
            array_lengths[key] = length
            if value is not None:
                metadata[key] = value
        else:
            metadata[key] = _read_value(r, value_type, key)
    return metadata, array_lengths


def _read_value(r: _Reader, value_type: int, what: str) -> GGUFScalar:
    if value_type == _STRING:
        return r.string(what)
    spec = _SCALAR_TYPES.get(value_type)
    if spec is None:
        raise GGUFError(f"{what} has unknown value type {value_type}")
    return r.scalar(spec[0], spec[1], what)


def _read_array(r: _Reader, what: str, depth: int) -> tuple[list[GGUFValue] | None, int]:
    """Read or skip one array; the list is returned only if it is short and not nested."""
    if depth > MAX_ARRAY_DEPTH:
        raise GGUFError(f"{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
    item_type = r.u32(f"{what} item type")
    if item_type not in _MIN_ELEMENT_SIZE:
        raise GGUFError(f"{what} has unknown item type {item_type}")
    length = r.count(f"{what} length", r.limits.max_array, _MIN_ELEMENT_SIZE[item_type])
    if item_type == _ARRAY:
        for i in range(length):
            _read_array(r, f"{what}[{i}]", depth + 1)
        return None, length
    if length <= r.limits.keep_array:
        return [_read_value(r, item_type, f"{what}[{i}]") for i in range(length)], length
    if item_type == _STRING:
        for i in range(length):
            r.skip_string(f"{what}[{i}]")
    else:
        r.pos += length * _MIN_ELEMENT_SIZE[item_type]  # fits: checked by count()
    return None, length


def _read_tensor_info(r: _Reader, index: int) -> TensorInfo:
    name_bytes = r.raw_string(f"tensor #{index} name")
    if len(name_bytes) > MAX_TENSOR_NAME:
        raise GGUFError(f"tensor #{index} name is {len(name_bytes)} bytes, above {MAX_TENSOR_NAME}")
    name = name_bytes.decode("utf-8", errors="replace")
    n_dims = r.u32(f"tensor {name!r} dimension count")
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFError(f"tensor {name!r} has {n_dims} dimensions (must be 1 to {MAX_DIMS})")
    dims = tuple(r.u64(f"tensor {name!r} dimension {d}") for d in range(n_dims))
    if any(d == 0 for d in dims) or math.prod(dims) >= 1 << 62:
        raise GGUFError(f"tensor {name!r} has invalid dimensions {dims}")
    type_id = r.u32(f"tensor {name!r} type")
    ggml = GGML_TYPES.get(type_id)
    if ggml is None:
        raise GGUFError(f"tensor {name!r} has unknown type {type_id}")
    if dims[0] % ggml.block_size:
        raise GGUFError(
            f"tensor {name!r}: first dimension {dims[0]} is not a multiple of the "
            f"{ggml.name} block size {ggml.block_size}"
        )
    offset = r.u64(f"tensor {name!r} offset")
    return TensorInfo(name=name, dims=dims, type_id=type_id, type_name=ggml.name, offset=offset)


def _check_tensor_data(
    r: _Reader, tensors: tuple[TensorInfo, ...], metadata: dict[str, GGUFValue]
) -> None:
    """Each tensor's bytes must lie inside the data section, which starts aligned after the
    tensor infos."""
    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"general.alignment must be a power of two, not {alignment!r}")
    data_start = -(-r.pos // alignment) * alignment
    data_size = r.size - data_start
    if tensors and data_size < 0:
        raise GGUFError("truncated file: tensor data section is missing")
    names: set[str] = set()
    for t in tensors:
        if t.name in names:
            raise GGUFError(f"tensor {t.name!r} appears twice")
        names.add(t.name)
        if t.offset % alignment:
            raise GGUFError(f"tensor {t.name!r} offset {t.offset} is not {alignment}-aligned")
        ggml = GGML_TYPES[t.type_id]
        n_bytes = t.n_elements // ggml.block_size * ggml.type_size
        if t.offset + n_bytes > data_size:
            raise GGUFError(
                f"truncated file: tensor {t.name!r} needs bytes {t.offset}..{t.offset + n_bytes} "
                f"of the data section, which has {max(data_size, 0)}"
            )


def _summarize(
    version: int,
    metadata: dict[str, GGUFValue],
    array_lengths: dict[str, int],
    tensors: tuple[TensorInfo, ...],
) -> GGUFMetadata:
    arch = _str_or_none(metadata.get("general.architecture"))
    context = metadata.get(f"{arch}.context_length") if arch else None
    return GGUFMetadata(
        version=version,
        architecture=arch,
        name=_str_or_none(metadata.get("general.name")),
        context_length=context if type(context) is int and context > 0 else None,
        parameter_count=sum(t.n_elements for t in tensors),
        quantization=_quantization(metadata, tensors),
        chat_template=_str_or_none(metadata.get("tokenizer.chat_template")),
        tensor_count=len(tensors),
        metadata=metadata,
        array_lengths=array_lengths,
        tensors=tensors,
    )


def kv_bytes_per_token(metadata: dict[str, GGUFValue]) -> int | None:
    """KV-cache bytes per context token a llama.cpp context of this model allocates (f16 K and
    V in every layer), from the architecture's metadata; None when it does not tell."""
    arch = _str_or_none(metadata.get("general.architecture"))
    if arch is None:
        return None

    def number(key: str) -> int | None:
        value = metadata.get(f"{arch}.{key}")
        return value if type(value) is int and 0 < value < 1 << 32 else None

    layers, heads, embd = (
        number("block_count"),
        number("attention.head_count"),
        number("embedding_length"),
    )
    if layers is None or heads is None or embd is None:
        return None
    kv_heads = metadata.get(f"{arch}.attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # one count per layer
        per_layer = [h for h in kv_heads if type(h) is int and h >= 0]
        total_kv_heads = sum(per_layer) if len(per_layer) == layers else heads * layers
    else:
        total_kv_heads = (kv_heads if type(kv_heads) is int and kv_heads >= 0 else heads) * layers
    key = number("attention.key_length") or embd // heads
    value = number("attention.value_length") or embd // heads
    return total_kv_heads * (key + value) * 2


def _quantization(metadata: dict[str, GGUFValue], tensors: tuple[TensorInfo, ...]) -> str | None:
    """The name of ``general.file_type``, else the type holding the most weights."""
    file_type = metadata.get("general.file_type")
    if type(file_type) is int and file_type in FILE_TYPE_NAMES:
        return FILE_TYPE_NAMES[file_type]
    weights: Counter[str] = Counter()
    for t in tensors:
        if len(t.dims) >= 2:
            weights[t.type_name] += t.n_elements
    if not weights:
        return None
    return weights.most_common(1)[0][0]


def _str_or_none(value: GGUFValue | None) -> str | None:
    return value if isinstance(value, str) and value else None
