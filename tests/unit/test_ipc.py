"""Frames on the gateway <-> worker channel: msgpack maps only, bounded, never pickle."""

from __future__ import annotations

import asyncio
import io
import pickle
import struct

import msgpack
import pytest

from lmaas import errors
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


# --- errors across the channel -----------------------------------------------------------


def _error_classes() -> set[type[errors.LmaasError]]:
    found: set[type[errors.LmaasError]] = set()
    todo: list[type[errors.LmaasError]] = [errors.LmaasError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == errors.__name__:
            found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


# One of each class of lmaas.errors, with every field it can carry set.
WIRE_ERRORS: list[errors.LmaasError] = [
    errors.LmaasError("the folder does not match its digest"),
    errors.InvalidRequestError("token id 99 is outside the vocabulary (0..9)", param="prompt"),
    errors.ContextLengthExceededError("the prompt is 9 tokens; the limit is 8", param="messages"),
    errors.AuthenticationError("this key was revoked", code="revoked_api_key"),
    errors.PermissionDeniedError("no access to model 'm'", param="model"),
    errors.ConflictError("version 3 is deployed", code="version_in_use"),
    errors.NotFoundError("no such route", code="not_found"),
    errors.RequestTooLargeError("request body exceeds the limit of 10 bytes"),
    errors.UnsupportedMediaTypeError("Content-Type must be application/json"),
    errors.MethodNotAllowedError("method not allowed for this route"),
    errors.OverloadedError("the queue of model 'm' is full", retry_after=7),
    errors.RateLimitExceededError(
        "API key k used its 3 requests per minute",
        headers={"Retry-After": "12", "x-ratelimit-remaining-requests": "0"},
    ),
    errors.ServiceUnavailableError("the worker serving this model stopped", retry_after=9),
    errors.InternalError("the engine failed to decode (status -1)"),
]


def test_every_error_class_has_a_wire_case_and_a_name_of_its_own() -> None:
    assert {type(e) for e in WIRE_ERRORS} == _error_classes()
    names = [type(e).__dict__.get("wire_name") for e in WIRE_ERRORS]
    assert None not in names and len(set(names)) == len(names)


@pytest.mark.parametrize("error", WIRE_ERRORS, ids=lambda e: type(e).__name__)
def test_errors_cross_a_frame_as_their_own_class(error: errors.LmaasError) -> None:
    frame = {"k": "rejected", "r": "req-1", "e": error.to_wire()}
    received = read_frame_blocking(io.BytesIO(encode_frame(frame)))
    assert received is not None
    back = errors.from_wire(received["e"])
    assert type(back) is type(error)
    assert (back.message, back.param, back.code) == (error.message, error.param, error.code)
    assert back.headers == error.headers
    assert back.status_code == error.status_code
    assert back.to_body() == error.to_body()
    assert str(back) == error.message


def test_retry_after_survives_the_channel() -> None:
    wire = errors.ServiceUnavailableError("restarting", retry_after=11).to_wire()
    back = errors.from_wire(msgpack.unpackb(msgpack.packb(wire)))
    assert back.headers == {"Retry-After": "11"}


@pytest.mark.parametrize(
    "wire",
    [
        {"kind": "quota_exceeded", "message": "/srv/secret/path is full", "param": None},
        {"kind": "invalid_request", "message": 42, "param": None, "code": None},
        {"kind": "invalid_request", "message": "m", "param": ["x"], "code": None},
        {"kind": "overloaded", "message": "m", "param": None, "code": None, "headers": [1]},
        {"kind": "overloaded", "message": "m", "headers": {"Retry-After": 3}},
        ["invalid_request", "m"],
        None,
    ],
)
def test_unknown_or_malformed_errors_become_a_generic_internal_error(wire: object) -> None:
    back = errors.from_wire(wire)
    assert type(back) is errors.InternalError
    assert back.status_code == 500 and back.code == "internal_error"
    assert "secret" not in back.message and back.headers == {}


def test_a_token_event_carries_its_error_class() -> None:
    event = TokenEvent("r1", finish_reason=FinishReason.ABORT, error=errors.InternalError("boom"))
    wire = msgpack.unpackb(msgpack.packb(event.to_wire()), strict_map_key=False)
    back = TokenEvent.from_wire(wire)
    assert type(back.error) is errors.InternalError and back.error.message == "boom"
    assert TokenEvent.from_wire(TokenEvent("r2").to_wire()).error is None
