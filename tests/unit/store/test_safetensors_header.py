"""The safetensors header check against real files (written by the reference library) and
hand-made hostile ones."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np
import pytest

from lmaas.errors import InvalidRequestError
from lmaas.store.safetensors_header import MAX_HEADER_BYTES, read_header
from tests.hf_folder import PARAMETERS, weights


def check(data: bytes) -> Any:
    return read_header(io.BytesIO(data), len(data), "w.safetensors")


def handmade(header: dict[str, Any], data: bytes = b"", *, raw: bytes | None = None) -> bytes:
    body = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def test_reference_files_pass_with_their_counts() -> None:
    summary = check(weights())
    assert summary.parameter_count == PARAMETERS
    assert summary.tensor_count == 3 and summary.dtypes == {"F32"}
    mixed = weights({"a": np.zeros((2, 3), np.float16), "b": np.zeros(5, np.int64)})
    summary = check(mixed)
    assert summary.parameter_count == 11 and summary.dtypes == {"F16", "I64"}
    assert check(weights({})).tensor_count == 0


def test_zero_sized_tensors_and_padding_spaces_pass() -> None:
    header = {"a": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]}}
    body = json.dumps(header).encode() + b"   "
    assert check(handmade({}, raw=body)).parameter_count == 0


def t(dtype: str = "F32", shape: list[Any] | None = None, offsets: list[Any] | None = None) -> Any:
    return {"dtype": dtype, "shape": shape or [2], "data_offsets": offsets or [0, 8]}


HOSTILE: list[tuple[str, bytes]] = [
    ("empty file", b""),
    ("short length", b"\x01\x00"),
    ("length past the file", struct.pack("<Q", 1000) + b"{}"),
    ("length beyond the cap", struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{" * 10),
    ("huge length", struct.pack("<Q", 2**64 - 1) + b"{}"),
    ("not json", handmade({}, raw=b"{not json}")),
    ("json list", handmade({}, raw=b"[1, 2]   ")),
    ("not utf-8", handmade({}, raw=b'{"\xff": 1}')),
    ("duplicate keys", handmade({}, raw=b'{"a": {}, "a": {}}')),
    ("deep nesting", handmade({}, raw=b"{" + b'"a":[' * 100_000 + b"]" * 100_000 + b"}")),
    ("unknown dtype", handmade({"a": t("F128")}, bytes(8))),
    ("missing shape", handmade({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, bytes(8))),
    ("extra field", handmade({"a": {**t(), "extra": 1}}, bytes(8))),
    ("negative dim", handmade({"a": t(shape=[-2])}, bytes(8))),
    ("bool dim", handmade({"a": t(shape=[True, 2])}, bytes(8))),
    ("float dim", handmade({"a": t(shape=[2.0])}, bytes(8))),
    ("too many dims", handmade({"a": t(shape=[1] * 17)}, bytes(4))),
    ("offsets past the end", handmade({"a": t(offsets=[0, 16])}, bytes(8))),
    ("reversed offsets", handmade({"a": t(offsets=[8, 0])}, bytes(8))),
    ("one offset", handmade({"a": t(offsets=[0])}, bytes(8))),
    ("size mismatch", handmade({"a": t(shape=[3])}, bytes(8))),
    ("huge shape", handmade({"a": t(shape=[2**40, 2**40])}, bytes(8))),
    ("gap", handmade({"a": t(offsets=[8, 16])}, bytes(16))),
    (
        "overlap",
        handmade({"a": t(offsets=[0, 8]), "b": t(shape=[1], offsets=[4, 8])}, bytes(8)),
    ),
    ("trailing bytes", handmade({"a": t()}, bytes(12))),
    ("metadata not strings", handmade({"__metadata__": {"a": 1}})),
    ("tensor spec not an object", handmade({"a": [1, 2]})),
    ("sub-byte remainder", handmade({"a": t("F4", shape=[3], offsets=[0, 1])}, bytes(1))),
]


@pytest.mark.parametrize("data", [d for _, d in HOSTILE], ids=[i for i, _ in HOSTILE])
def test_hostile_headers_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check(data)
    assert "w.safetensors" in info.value.message and info.value.status_code == 400


def test_sub_byte_dtypes_are_counted_in_bits() -> None:
    data = handmade({"a": t("F4", shape=[4], offsets=[0, 2])}, bytes(2))
    assert check(data).parameter_count == 4
