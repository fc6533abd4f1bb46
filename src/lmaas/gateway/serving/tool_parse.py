"""Generated text back into tool calls, as it streams.

The output of a request with tools follows the worker's constraint (``ToolCallSpec``): some
whitespace, then either text (``tool_choice: auto`` only) or calls, each
``<tool_call>`` + ``{"name": "...", "arguments": {...}}`` + ``</tool_call>`` with the name
first. ``ToolCallParser`` reads it piece by piece, as tokens arrive, and says what each piece
adds: ``Text``, the start of a call (``CallStart``: its id and name, as soon as the name is
complete) or more of a call's arguments (``CallArguments``, the JSON text as generated). The
arguments end where their JSON value ends, which a small scanner (strings, escapes, nesting)
finds. A collected body reads the whole text through the same parser.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from lmaas.gateway.serving.tools import CLOSE, OPEN

_WS = " \t\n\r"
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:')
_TAIL = re.compile(r"\s*\}\s*" + re.escape(CLOSE))


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class CallArguments:
    index: int
    text: str


Piece = Text | CallStart | CallArguments


@dataclass(slots=True)
class ParsedCall:
    id: str
    name: str
    arguments: str = ""
    complete: bool = False


@dataclass(slots=True)
class _ValueScanner:
    """Where a JSON value ends, fed in pieces (leading whitespace is skipped, not part of it)."""

    started: bool = False
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    scalar: bool = False  # a number, true, false or null: ends at the next delimiter

    def feed(self, text: str) -> tuple[int, int, bool]:
        """``(start, end, done)``: ``text[start:end]`` belongs to the value, ``text[:end]`` is
        consumed, and ``done`` says the value ended there."""
        start = 0
        for i, c in enumerate(text):
            if not self.started:
                if c in _WS:
                    start = i + 1
                else:
                    self._begin(c)
                continue
            end = self._step(c, i)
            if end is not None:
                return start, end, True
        return start, len(text), False

    def _begin(self, c: str) -> None:
        self.started = True
        if c in "{[":
            self.depth = 1
        elif c == '"':
            self.in_string = True
        else:
            self.scalar = True

    def _step(self, c: str, i: int) -> int | None:
        """One character after the first; where the value ends, if it ends here."""
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif c == "\\":
                self.escaped = True
            elif c == '"':
                self.in_string = False
                if self.depth == 0:
                    return i + 1
        elif self.scalar:
            if c in _WS or c in ",}]":
                return i
        elif c == '"':
            self.in_string = True
        elif c in "{[":
            self.depth += 1
        elif c in "}]":
            self.depth -= 1
            if self.depth == 0:
                return i + 1
        return None


@dataclass(slots=True)
class ToolCallParser:
    """One choice's output, read as it comes (``feed``, then ``finish``)."""

    pieces: list[str] = field(default_factory=list)  # the output so far, as it came
    mode: str = "start"  # start | text | calls
    calls: list[ParsedCall] = field(default_factory=list)
    _buf: str = ""
    _state: str = "open"  # within calls: open | head | arguments | tail | done
    _scanner: _ValueScanner = field(default_factory=_ValueScanner)

    @property
    def raw(self) -> str:
        """The whole output so far."""
        if len(self.pieces) > 1:
            self.pieces[:] = ["".join(self.pieces)]
        return self.pieces[0] if self.pieces else ""

    def feed(self, text: str) -> list[Piece]:
        self.pieces.append(text)
        if self.mode == "text":
            return [Text(text)] if text else []
        self._buf += text
        if self.mode == "start":
            head = self._buf.lstrip(_WS)
            if not head or (len(head) < len(OPEN) and OPEN.startswith(head)):
                return []  # not yet known: text, or the start of a call
            if not head.startswith(OPEN):
                self.mode = "text"
                out, self._buf = self._buf, ""
                return [Text(out)]
            self.mode = "calls"
        return self._calls()

    def finish(self) -> list[Piece]:
        """What is left once the output has ended: text that looked like the start of a call
        (or was one, cut before its name was complete), as text."""
        if (self.mode == "start" and self._buf) or (self.mode == "calls" and not self.calls):
            self.mode = "text"
            self._buf = ""
            return [Text(self.raw)]
        return []

    @property
    def content(self) -> str | None:
        """The reply's text: none once a call has started (the rest is calls)."""
        return None if self.calls else self.raw

    def _calls(self) -> list[Piece]:
        out: list[Piece] = []
        while self._step(out):
            pass
        return out

    def _step(self, out: list[Piece]) -> bool:
        """Read what the buffer holds in the current state; False when it needs more."""
        buf = self._buf
        if self._state == "open":
            head = buf.lstrip(_WS)
            if head.startswith(OPEN):
                self._buf, self._state = head[len(OPEN) :], "head"
                return True
            if head and not OPEN.startswith(head):
                self._state = "done"  # anything else after the calls is not read
            return False
        if self._state == "head":
            m = _HEAD.match(buf)
            if m is None:
                return False
            try:
                name = json.loads(f'"{m.group(1)}"')
            except ValueError:
                name = m.group(1)
            call = ParsedCall(new_call_id(), str(name))
            self.calls.append(call)
            out.append(CallStart(len(self.calls) - 1, call.id, call.name))
            self._buf, self._state, self._scanner = buf[m.end() :], "arguments", _ValueScanner()
            return True
        if self._state == "arguments":
            start, end, done = self._scanner.feed(buf)
            if end > start:
                piece = buf[start:end]
                self.calls[-1].arguments += piece
                out.append(CallArguments(len(self.calls) - 1, piece))
            self._buf = buf[end:]
            if done:
                self._state = "tail"
            return done
        if self._state == "tail":
            m = _TAIL.match(buf)
            if m is None:
                return False
            self.calls[-1].complete = True
            self._buf, self._state = buf[m.end() :], "open"
            return True
        return False  # done: the rest is ignored


def parse_all(text: str) -> ToolCallParser:
    """A whole output read at once."""
    parser = ToolCallParser()
    parser.feed(text)
    parser.finish()
    return parser


def piece_delta(piece: Piece, legacy: bool) -> dict[str, object]:
    """A stream chunk's delta for one piece: text, or OpenAI's tool-call delta (the legacy
    ``function_call`` delta when the request used ``functions``)."""
    if isinstance(piece, Text):
        return {"content": piece.text}
    if isinstance(piece, CallStart):
        function = {"name": piece.name, "arguments": ""}
        if legacy:
            return {"function_call": function}
        call = {"index": piece.index, "id": piece.id, "type": "function", "function": function}
        return {"tool_calls": [call]}
    if legacy:
        return {"function_call": {"arguments": piece.text}}
    return {"tool_calls": [{"index": piece.index, "function": {"arguments": piece.text}}]}


def tool_finish(reason: str | None, parser: ToolCallParser, legacy: bool) -> str | None:
    """A choice's finish reason: ``tool_calls`` (legacy ``function_call``) where the engine
    stopped after calls; cut short (``length``) stays as it is."""
    if reason == "stop" and parser.calls:
        return "function_call" if legacy else "tool_calls"
    return reason
