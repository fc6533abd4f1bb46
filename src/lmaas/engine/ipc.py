"""Length-prefixed msgpack frames: the only format on the gateway <-> worker channel.

A frame is a 4-byte big-endian length followed by a msgpack map. msgpack decodes to plain
dicts, lists, strings and numbers only, so a frame can never carry code (unlike pickle).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, BinaryIO

import msgpack

MAX_FRAME_BYTES = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """The peer sent something that is not a valid frame."""


def encode_frame(obj: dict[str, Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FrameError(f"undecodable frame: {exc}") from exc
    if not isinstance(obj, dict):
        raise FrameError("a frame must be a map")
    return obj


def _length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    return int(length)


def read_frame_blocking(stream: BinaryIO) -> dict[str, Any] | None:
    """Read one frame from a blocking file; ``None`` at a clean end of stream."""
    header = stream.read(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise FrameError("truncated frame header")
    length = _length(header)
    body = stream.read(length)
    if len(body) < length:
        raise FrameError("truncated frame body")
    return decode_body(body)


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Read one frame from an asyncio stream; ``None`` at a clean end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError("truncated frame header") from exc
    length = _length(header)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FrameError("truncated frame body") from exc
    return decode_body(body)
