"""Frames on the gateway <-> worker channel: msgpack maps only, bounded, never pickle."""

from __future__ import annotations

import asyncio
import io
import pickle
import struct

import msgpack
import pytest

from lmaas.engine.ipc import FrameError, encode_frame, read_frame, read_frame_blocking
from lmaas.protocol.engine import FinishReason, TokenEvent, TokenLogprob


def test_round_trip_blocking_and_async() -> None:
    frame = {"k": "gen", "req": {"prompt": [1, 2], "bias": {5: -1.5}}}
    data = encode_frame(frame) * 2
    stream = io.BytesIO(data)
    assert read_frame_blocking(stream) == frame
    assert read_frame_blocking(stream) == frame
    assert read_frame_blocking(stream) is None

    async def read_two() -> list[object]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return [await read_frame(reader), await read_frame(reader), await read_frame(reader)]

    assert asyncio.run(read_two()) == [frame, frame, None]


def test_truncated_and_oversized_frames_are_errors() -> None:
    data = encode_frame({"k": "x"})
    with pytest.raises(FrameError):
        read_frame_blocking(io.BytesIO(data[:-1]))
    with pytest.raises(FrameError):
        read_frame_blocking(io.BytesIO(data[:2]))
    with pytest.raises(FrameError, match="exceeds"):
        read_frame_blocking(io.BytesIO(struct.pack(">I", 2**31) + b"x"))


def test_pickle_payload_is_not_a_frame() -> None:
    body = pickle.dumps({"k": "gen"})
    with pytest.raises(FrameError):
        read_frame_blocking(io.BytesIO(struct.pack(">I", len(body)) + body))


def test_non_map_frame_is_refused() -> None:
    body = msgpack.packb([1, 2, 3])
    with pytest.raises(FrameError, match="map"):
        read_frame_blocking(io.BytesIO(struct.pack(">I", len(body)) + body))


def test_token_event_wire_round_trip() -> None:
    lp = TokenLogprob(5, "hi", [104, 105], -0.25, [(5, "hi", [104, 105], -0.25)])
    event = TokenEvent(
        "r1",
        text="hi",
        token_ids=[5],
        logprobs=[lp],
        finish_reason=FinishReason.STOP,
        prompt_tokens=3,
        completion_tokens=1,
        queue_time=0.5,
        prompt_logprobs=[lp],
    )
    wire = msgpack.unpackb(msgpack.packb(event.to_wire()), strict_map_key=False)
    assert TokenEvent.from_wire(wire) == event
