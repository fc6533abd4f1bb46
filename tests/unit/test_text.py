"""Stop strings and incremental UTF-8 decoding."""

from __future__ import annotations

from lmaas.worker.text import IncrementalDecoder, StopMatcher


def feed_all(m: StopMatcher, parts: list[str]) -> tuple[str, bool]:
    out = ""
    for p in parts:
        text, stopped = m.feed(p)
        out += text
        if stopped:
            return out, True
    return out + m.flush(), False


def test_stop_split_across_tokens_is_not_emitted() -> None:
    out, stopped = feed_all(StopMatcher(["\n\n"]), ["Hello", "\n", "\nWorld"])
    assert (out, stopped) == ("Hello", True)


def test_partial_prefix_is_released_when_it_does_not_complete() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("ab ST") == ("ab ", False)
    assert m.feed("ART") == ("START", False)
    assert m.flush() == ""


def test_held_text_is_flushed_at_end() -> None:
    out, stopped = feed_all(StopMatcher(["END"]), ["the E", "N"])
    assert (out, stopped) == ("the EN", False)


def test_earliest_of_several_stops_wins() -> None:
    out, stopped = feed_all(StopMatcher(["b", "cd"]), ["acdb"])
    assert (out, stopped) == ("a", True)


def test_include_stop() -> None:
    out, stopped = feed_all(StopMatcher(["."], include_stop=True), ["One. Two."])
    assert (out, stopped) == ("One.", True)


def test_no_stops_passes_through() -> None:
    m = StopMatcher([])
    assert m.feed("abc") == ("abc", False)


def test_utf8_split_across_pieces() -> None:
    d = IncrementalDecoder()
    data = "héllo €".encode()
    out = "".join(d.feed(data[i : i + 1]) for i in range(len(data))) + d.flush()
    assert out == "héllo €"


def test_invalid_utf8_is_replaced_not_raised() -> None:
    d = IncrementalDecoder()
    assert d.feed(b"a\xff") + d.flush() == "a\ufffd"
