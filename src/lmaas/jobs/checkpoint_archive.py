"""A training checkpoint as one plain tar, for a fine-tune on a Ray node to keep at the gateway.

The archive holds exactly the three files of a checkpoint folder
(:mod:`lmaas.training.checkpoints`; this module must not import it, torch is heavy), at the
top level, once each: ``trainable.safetensors``, ``optimizer.safetensors`` and ``state.json``
(at most :data:`MAX_STATE_BYTES`, a JSON object whose ``step`` and ``epoch`` are whole numbers
and whose ``fingerprint`` and ``metrics`` are objects). Anything else is refused
(``invalid_archive``, 400): another name (``./state.json``, ``a/state.json``, ``../x``,
``/abs``), a name twice, a directory, a link or a special file (those :class:`TarReader`
already refuses), a missing file, data after the archive's end. A member's name is only ever
compared with those three; the files written from an archive are named by the constants here.

The same check runs where the bytes arrive at the gateway (the archive is stored as sent, once
it has passed) and where a runner unpacks it again on another node.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO, Final

from lmaas.errors import InvalidRequestError
from lmaas.store.archive import Member, Readable, TarReader, refused
from lmaas.store.folder import tar_chunks, tar_length

# The names of lmaas.training.checkpoints (a test keeps them equal).
PREFIX: Final = "checkpoint-"
WEIGHTS: Final = "trainable.safetensors"
OPTIMIZER: Final = "optimizer.safetensors"
STATE: Final = "state.json"
NAMES: Final = (WEIGHTS, OPTIMIZER, STATE)
MAX_STATE_BYTES: Final = 1 << 20
_CHUNK: Final = 1 << 20
# Where a fetched checkpoint is unpacked before it is renamed into place (the training loop's
# prune deletes a ``.tmp-checkpoint-*`` left by a crash).
_UNPACKING: Final = f".tmp-{PREFIX}fetched"

Sink = Callable[[str, bytes], None]


class _Tee:
    """A stream that keeps what was read from it until :meth:`drain`."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._read = bytearray()

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._read += data
        return data

    def drain(self) -> Iterator[bytes]:
        if self._read:
            data = bytes(self._read)
            self._read.clear()
            yield data


class CheckpointArchive:
    """Check a checkpoint archive read from ``source`` (see the module doc) while passing its
    bytes on: :meth:`raw` yields every byte read, in order, and raises ``InvalidRequestError``
    as soon as the archive is refused; ``sink`` (if given) gets each file's data by name. The
    checkpoint's step is :attr:`step` once :meth:`raw` has ended."""

    def __init__(self, source: Readable, *, sink: Sink | None = None) -> None:
        self._tee = _Tee(source)
        self._source = source
        self._sink = sink
        self._state = bytearray()
        self.step: int | None = None

    def raw(self) -> Iterator[bytes]:
        seen: set[str] = set()
        for member in TarReader(self._tee).members():
            name = _admitted(member, seen)
            for chunk in member.chunks():
                if name == STATE:
                    self._state += chunk
                if self._sink is not None:
                    self._sink(name, chunk)
                yield from self._tee.drain()
            yield from self._tee.drain()
        yield from self._tee.drain()
        while chunk := self._source.read(_CHUNK):
            if chunk.strip(b"\0"):
                raise refused("the checkpoint archive has data after its end")
            yield chunk
        missing = [name for name in NAMES if name not in seen]
        if missing:
            raise refused(f"the checkpoint archive lacks {', '.join(missing)}")
        self.step = _step_of(bytes(self._state))


def _admitted(member: Member, seen: set[str]) -> str:
    """The member's name when it is one of :data:`NAMES`, a file not seen before."""
    shown = repr(member.name[:100])
    if member.name not in NAMES:
        raise refused(f"a checkpoint archive holds only {', '.join(NAMES)}, not {shown}")
    if member.kind != "file":
        raise refused(f"{shown} in a checkpoint archive is not a file")
    if member.name in seen:
        raise refused(f"{shown} is in the checkpoint archive twice")
    if member.name == STATE and member.size > MAX_STATE_BYTES:
        raise refused(f"{STATE} in a checkpoint archive is at most {MAX_STATE_BYTES} bytes")
    seen.add(member.name)
    return member.name


def _step_of(state: bytes) -> int:
    try:
        parsed = json.loads(state)
    except (UnicodeDecodeError, ValueError):
        raise refused(f"{STATE} of the checkpoint is not JSON") from None
    if not isinstance(parsed, dict):
        raise refused(f"{STATE} of the checkpoint is not a JSON object")
    for key in ("step", "epoch"):
        value = parsed.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
            raise refused(f"{STATE} of the checkpoint has no whole {key}")
    for key in ("fingerprint", "metrics"):
        if not isinstance(parsed.get(key), dict):
            raise refused(f"{STATE} of the checkpoint has no {key} object")
    return int(parsed["step"])


# -- on the runner ----------------------------------------------------------------------------


def archive_length(folder: Path) -> int:
    """The byte length of :func:`archive_chunks` of ``folder``."""
    return tar_length((name, (folder / name).stat().st_size) for name in NAMES)


def archive_chunks(folder: Path) -> Iterator[bytes]:
    """The checkpoint folder ``folder`` as a plain tar of its three files, generated as read."""
    entries = [
        (name, (folder / name).stat().st_size, partial(_opener, folder / name)) for name in NAMES
    ]
    return tar_chunks(entries)


def _opener(path: Path) -> BinaryIO:
    return path.open("rb")


def unpack(source: Readable, directory: Path) -> Path:
    """Check and write the archive read from ``source`` as the checkpoint folder
    ``directory/checkpoint-<step>``, whole or not at all (an existing folder of that step is
    replaced); that folder. Raises ``InvalidRequestError`` for a refused archive."""
    directory.mkdir(parents=True, exist_ok=True)
    work = directory / _UNPACKING
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    handles: dict[str, BinaryIO] = {}

    def sink(name: str, chunk: bytes) -> None:
        if name not in handles:  # a name of NAMES (checked before any data comes)
            handles[name] = (work / name).open("wb")
        handles[name].write(chunk)

    archive = CheckpointArchive(source, sink=sink)
    try:
        for _ in archive.raw():
            pass
        for handle in handles.values():
            handle.close()
        for name in NAMES:  # an empty file has no data, so it has no handle
            (work / name).touch()
        if archive.step is None:
            raise InvalidRequestError("the checkpoint archive was not read to its end")
        final = directory / f"{PREFIX}{archive.step:08d}"
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        return final
    finally:
        for handle in handles.values():
            handle.close()
        shutil.rmtree(work, ignore_errors=True)
