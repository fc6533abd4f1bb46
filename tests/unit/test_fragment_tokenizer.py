"""Which special tokens are certain cuts of llama.cpp's tokenizer, and that stretches between
them are tokenized once (a fake llama.cpp: one id per character, special tokens parsed)."""

from __future__ import annotations

from lmaas.worker.backends.llamacpp.fragments import (
    MIN_CHARS,
    FragmentTokenizer,
    SpecialToken,
    borders_overlap,
    overlaps_itself,
)

END = SpecialToken("<|end|>", 1000, splits=True, strips=False)
START = SpecialToken("<|start|>", 1001, splits=True, strips=False)


def fake_llama(specials: list[SpecialToken], calls: list[str]):
    """Special tokens split out longest first, then one id per character (its code point)."""
    by_len = sorted(specials, key=lambda t: len(t.text), reverse=True)

    def raw(text: str) -> list[int]:
        calls.append(text)
        parts: list[str | int] = [text]
        for tok in by_len:
            out: list[str | int] = []
            for p in parts:
                if isinstance(p, int):
                    out.append(p)
                    continue
                pieces = p.split(tok.text)
                for i, piece in enumerate(pieces):
                    if i:
                        out.append(tok.id)
                    out.append(piece)
            parts = out
        return [x for p in parts for x in ([p] if isinstance(p, int) else map(ord, p))]

    return raw


def test_overlap_rules() -> None:
    assert borders_overlap("<|a|>", "<|a|>x")  # one contains the other
    assert borders_overlap("ab", "bc")  # "abc": an end of one starts the other
    assert borders_overlap("bc", "ab")
    assert not borders_overlap("<|end|>", "<|start|>")
    assert overlaps_itself("aba") and not overlaps_itself("<|end|>")


def test_a_cut_is_made_only_where_certain() -> None:
    longer = SpecialToken("<|end|>\n", 1002, splits=True, strips=False)  # contains <|end|>
    stripping = SpecialToken("<|start|>xx", 1003, splits=True, strips=True)
    tok = FragmentTokenizer(lambda t: [], [END, START, longer, stripping], bos_id=1)
    assert not tok.certain("<|end|>")  # a longer token is matched first and may hold it
    assert not tok.certain("<|start|>")  # a longer one strips whitespace next to it
    assert FragmentTokenizer(lambda t: [], [END, longer], bos_id=1).certain("<|end|>\n")
    alone = FragmentTokenizer(lambda t: [], [END, START], bos_id=1)
    assert alone.certain("<|end|>") and alone.certain("<|start|>")


def test_repeated_stretches_are_tokenized_once_and_the_ids_do_not_change() -> None:
    calls: list[str] = []
    raw = fake_llama([END, START], calls)
    tok = FragmentTokenizer(raw, [END, START], bos_id=7)
    system = "s" * (MIN_CHARS * 2)
    texts = [f"<|start|>system {system}<|end|><|start|>user q{i}<|end|>" for i in range(3)]
    for text in texts:
        assert tok.tokenize(text, add_bos=True) == [7, *raw(text)]
    whole = len(texts)  # the calls made by the comparisons above
    stretches = [c for c in calls if system in c and "<|" not in c]
    assert len(stretches) == 1  # the system prompt's stretch, tokenized by the first only
    assert len(calls) == whole + 1 + len(texts)  # + the short stretch (user q) each time


def test_uncertain_cuts_leave_the_text_whole_and_short_texts_skip_the_split() -> None:
    calls: list[str] = []
    longer = SpecialToken("<|end|>\n", 1002, splits=True, strips=False)
    raw = fake_llama([END, START, longer], calls)
    tok = FragmentTokenizer(raw, [END, START, longer], bos_id=7)
    text = "x" * MIN_CHARS + "<|end|>" + "y" * MIN_CHARS + "<|end|>\nz"
    assert tok.tokenize(text, add_bos=False) == raw(text)
    assert tok.tokenize("short<|start|>", add_bos=False) == raw("short<|start|>")


def test_kept_stretches_are_bounded() -> None:
    calls: list[str] = []
    raw = fake_llama([END], calls)
    tok = FragmentTokenizer(raw, [END], bos_id=7, max_kept_chars=3 * MIN_CHARS)
    stretches = [c * MIN_CHARS for c in "abcd"]
    for s in stretches:
        tok.tokenize(s + "<|end|>", add_bos=False)
    calls.clear()
    tok.tokenize(stretches[0] + "<|end|>", add_bos=False)  # the oldest was dropped
    tok.tokenize(stretches[3] + "<|end|>", add_bos=False)  # the newest is kept
    assert calls == [stretches[0]]


def test_lengths_are_compared_in_bytes_and_twin_texts_are_never_cut() -> None:
    # Fewer characters than <|im_end|> but more bytes: llama.cpp matches it first.
    wide = SpecialToken("ééééé<|", 1004, splits=True, strips=False)
    end = SpecialToken("<|im_end|>", 1005, splits=True, strips=False)
    assert not FragmentTokenizer(lambda t: [], [wide, end], bos_id=1).certain("<|im_end|>")
    twin = SpecialToken("<|end|>", 1006, splits=True, strips=False)
    assert not FragmentTokenizer(lambda t: [], [END, twin], bos_id=1).certain("<|end|>")
