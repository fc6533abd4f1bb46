"""Incremental detokenization and stop-string matching (pure, no model)."""

from __future__ import annotations

import codecs


class IncrementalDecoder:
    """Turns token byte pieces into text, holding back an incomplete UTF-8 character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)

    def copy(self) -> IncrementalDecoder:
        """An independent decoder in the same state (beam search branches a sequence)."""
        other = IncrementalDecoder()
        other._decoder.setstate(self._decoder.getstate())
        return other


class StopMatcher:
    """Finds the first stop string in streamed text without ever emitting part of one.

    ``feed`` returns the text that is safe to emit now and whether a stop string was hit;
    text that could still become the start of a stop string is held back until it cannot.
    """

    def __init__(self, stops: list[str], *, include_stop: bool = False) -> None:
        self._stops = [s for s in stops if s]
        self._include = include_stop
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self._stops:
            return text, False
        buf = self._held + text
        first: tuple[int, str] | None = None
        for stop in self._stops:
            idx = buf.find(stop)
            if idx != -1 and (first is None or idx < first[0]):
                first = (idx, stop)
        if first is not None:
            idx, stop = first
            self.stopped = True
            self._held = ""
            return buf[: idx + len(stop)] if self._include else buf[:idx], True
        keep = self._longest_partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def copy(self) -> StopMatcher:
        """An independent matcher in the same state (beam search branches a sequence)."""
        other = StopMatcher([], include_stop=self._include)
        other._stops = self._stops
        other._held = self._held
        other.stopped = self.stopped
        return other

    def flush(self) -> str:
        """The held-back text, once the sequence ends without completing a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_partial_suffix(self, buf: str) -> int:
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:k]):
                    best = k
                    break
        return best
