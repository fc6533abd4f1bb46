"""Builds small GGUF files byte by byte, valid or deliberately broken, for the parser tests."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = range(10)
UINT64, INT64, FLOAT64 = 10, 11, 12
F32, F16, Q4_0, Q4_1 = 0, 1, 2, 3

_CODES = {
    UINT8: "B",
    INT8: "b",
    UINT16: "H",
    INT16: "h",
    UINT32: "I",
    INT32: "i",
    FLOAT32: "f",
    BOOL: "?",
    UINT64: "Q",
    INT64: "q",
    FLOAT64: "d",
}


@dataclass
class GGUFBuilder:
    """Append metadata and tensors, then :meth:`build` the file's bytes."""

    order: str = "<"
    version: int = 3
    alignment: int = 32
    kvs: list[bytes] = field(default_factory=list)
    infos: list[bytes] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    kv_count: int | None = None  # override the counts written in the header
    tensor_count: int | None = None

    def pack(self, code: str, *values: object) -> bytes:
        return struct.pack(self.order + code, *values)

    def string(self, text: str | bytes) -> bytes:
        raw = text.encode() if isinstance(text, str) else text
        return self.pack("Q", len(raw)) + raw

    def value(self, value_type: int, value: object) -> bytes:
        if value_type == STRING:
            assert isinstance(value, str | bytes)
            return self.string(value)
        return self.pack(_CODES[value_type], value)

    def add(self, key: str, value_type: int, value: object) -> GGUFBuilder:
        self.kvs.append(
            self.string(key) + self.pack("I", value_type) + self.value(value_type, value)
        )
        return self

    def add_array(self, key: str, item_type: int, items: list[object]) -> GGUFBuilder:
        body = b"".join(self.value(item_type, item) for item in items)
        header = self.pack("I", ARRAY) + self.pack("I", item_type) + self.pack("Q", len(items))
        self.kvs.append(self.string(key) + header + body)
        return self

    def add_raw(self, raw: bytes) -> GGUFBuilder:
        self.kvs.append(raw)
        return self

    def tensor(
        self,
        name: str,
        dims: tuple[int, ...],
        ggml_type: int = F32,
        n_bytes: int | None = None,
        offset: int | None = None,
    ) -> GGUFBuilder:
        """A tensor whose data (``n_bytes`` zeros, computed for F32/F16 by default) follows the
        previous one, aligned, unless ``offset`` places it (then no data is added)."""
        if n_bytes is None:
            elements = 1
            for d in dims:
                elements *= d
            n_bytes = elements * (4 if ggml_type == F32 else 2)
        if offset is None:  # an explicit offset is the test's business: no data is added
            offset = -(-len(self.data) // self.alignment) * self.alignment
            self.data.extend(b"\0" * (offset + n_bytes - len(self.data)))
        info = self.string(name) + self.pack("I", len(dims))
        info += b"".join(self.pack("Q", d) for d in dims)
        info += self.pack("I", ggml_type) + self.pack("Q", offset)
        self.infos.append(info)
        return self

    def build(self) -> bytes:
        n_tensors = len(self.infos) if self.tensor_count is None else self.tensor_count
        n_kv = len(self.kvs) if self.kv_count is None else self.kv_count
        head = b"GGUF" + self.pack("I", self.version) + self.pack("Q", n_tensors)
        head += self.pack("Q", n_kv) + b"".join(self.kvs) + b"".join(self.infos)
        padding = -len(head) % self.alignment
        return head + b"\0" * padding + bytes(self.data)


def small_model(vocab: int = 100) -> GGUFBuilder:
    """A well-formed little llama-like file exercising every value type."""
    b = GGUFBuilder()
    b.add("general.architecture", STRING, "llama")
    b.add("general.name", STRING, "Tiny Test")
    b.add("general.file_type", UINT32, 1)
    b.add("llama.context_length", UINT32, 2048)
    b.add("llama.block_count", UINT64, 2)
    b.add("llama.rope.freq_base", FLOAT32, 10000.0)
    b.add("llama.attention.layer_norm_rms_epsilon", FLOAT64, 1e-5)
    b.add("test.u8", UINT8, 255).add("test.i8", INT8, -1).add("test.u16", UINT16, 65535)
    b.add("test.i16", INT16, -2).add("test.i32", INT32, -3).add("test.i64", INT64, -(2**40))
    b.add("test.flag", BOOL, True)
    b.add("tokenizer.chat_template", STRING, "{{ messages }}")
    b.add_array("general.languages", STRING, ["en", "fr"])
    b.add_array("tokenizer.ggml.tokens", STRING, [f"tok{i}" for i in range(vocab)])
    b.add_array("tokenizer.ggml.scores", FLOAT32, [0.5] * vocab)
    b.tensor("token_embd.weight", (8, vocab), F16)
    b.tensor("blk.0.attn_norm.weight", (8,), F32)
    b.tensor("output.weight", (8, vocab), F16)
    return b
