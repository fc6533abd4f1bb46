"""Token ids and labels: the loss sees assistant turns, completions, or all of a text."""

from __future__ import annotations

from typing import Any

import pytest

from lmaas.training.data import (
    IGNORE,
    TokenizedExample,
    collate,
    epoch_batches,
    steps_per_epoch,
    tokenize_examples,
)
from lmaas.training.formats import TrainingDataError, read_examples
from tests.unit.training.conftest import jsonl


def _learned(tokenizer: Any, example: TokenizedExample) -> list[str]:
    """The labelled stretches of the example, decoded one run at a time."""
    runs: list[list[int]] = []
    previous = False
    for label in example.labels:
        if label != IGNORE:
            if not previous:
                runs.append([])
            runs[-1].append(label)
        previous = label != IGNORE
    return [tokenizer.decode(run) for run in runs]


def _one(tokenizer: Any, row: dict[str, Any], max_seq_len: int = 256) -> TokenizedExample:
    [example] = tokenize_examples(read_examples(jsonl([row])), tokenizer, max_seq_len).examples
    return example


def test_only_assistant_turns_are_labelled(tokenizer: Any) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "the capital of france?"},
            {"role": "assistant", "content": "paris"},
            {"role": "user", "content": "and the dog?"},
            {"role": "assistant", "content": "lazy, quick fox"},
        ]
    }
    example = _one(tokenizer, row)
    assert _learned(tokenizer, example) == ["paris<|im_end|>", "lazy, quick fox<|im_end|>"]
    # The labels are the input ids where they are set.
    assert all(
        lab in (IGNORE, tok) for lab, tok in zip(example.labels, example.input_ids, strict=True)
    )
    rendered = tokenizer.apply_chat_template(row["messages"], tokenize=False)
    assert tokenizer.decode(example.input_ids) == rendered


def test_a_weight_zero_turn_is_not_learned(tokenizer: Any) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two", "weight": 0},
            {"role": "user", "content": "three"},
            {"role": "assistant", "content": "four"},
        ]
    }
    assert _learned(tokenizer, _one(tokenizer, row)) == ["four<|im_end|>"]


def test_a_template_that_changes_earlier_turns_falls_back_to_the_text(tokenizer: Any) -> None:
    """A template adding a default system turn to a conversation without one (as SmolLM2's
    does) renders no empty-history prefix of the whole; the turn is found by its text (which
    this template trims)."""
    odd = tokenizer.chat_template.replace(
        "{% for m in messages %}",
        "{% if messages and messages[0]['role'] != 'system' %}<|im_start|>system\nhi<|im_end|>\n"
        "{% endif %}{% for m in messages %}",
    ).replace("{{ m['content'] }}", "{{ m['content'] | trim }}")
    original = tokenizer.chat_template
    tokenizer.chat_template = odd
    try:
        row = {"messages": [{"role": "assistant", "content": "  hello there\n"}]}
        example = _one(tokenizer, row)
    finally:
        tokenizer.chat_template = original
    assert _learned(tokenizer, example) == ["hello there"]
    assert tokenizer.decode(example.input_ids).startswith("<|im_start|>system\nhi")


def test_prompt_completion_labels_the_completion_and_the_end(tokenizer: Any) -> None:
    example = _one(tokenizer, {"prompt": "the capital of france is", "completion": " paris"})
    assert _learned(tokenizer, example) == [" paris<|im_end|>"]
    assert tokenizer.decode(example.input_ids) == "the capital of france is paris<|im_end|>"


def test_text_is_labelled_everywhere_and_cut_into_windows(tokenizer: Any) -> None:
    text = "the quick brown fox jumps over the lazy dog " * 6
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    out = tokenize_examples(read_examples(jsonl([{"text": text}])), tokenizer, 16)
    assert [e.input_ids for e in out.examples] == [ids[i : i + 16] for i in range(0, len(ids), 16)]
    assert all(e.labels == e.input_ids for e in out.examples)
    assert out.truncated == 0 and out.skipped == 0


def test_truncation_keeps_the_start_and_skips_what_has_nothing_left(tokenizer: Any) -> None:
    rows = [
        {"prompt": "the quick brown fox jumps over the lazy dog", "completion": " red"},
        {"prompt": "one", "completion": " two three four five six seven"},
    ]
    out = tokenize_examples(read_examples(jsonl(rows)), tokenizer, 4)
    assert (out.truncated, out.skipped) == (2, 1)
    [kept] = out.examples
    assert kept.line == 2 and len(kept.input_ids) == 4


def test_chat_needs_a_template(tokenizer: Any) -> None:
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    original = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        with pytest.raises(TrainingDataError, match="no chat template") as caught:
            tokenize_examples(read_examples(jsonl([row])), tokenizer, 32)
    finally:
        tokenizer.chat_template = original
    assert caught.value.line == 1


def test_collate_pads_to_the_longest_and_masks_the_padding() -> None:
    a = TokenizedExample([5, 6, 7], [IGNORE, 6, 7], 1)
    b = TokenizedExample([8], [8], 2)
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_epoch_batches_are_a_seeded_length_grouped_partition() -> None:
    lengths = [(i * 37) % 50 + 1 for i in range(70)]
    first = epoch_batches(lengths, 4, seed=1, epoch=0)
    assert first == epoch_batches(lengths, 4, seed=1, epoch=0)
    assert first != epoch_batches(lengths, 4, seed=1, epoch=1)
    assert sorted(i for batch in first for i in batch) == list(range(70))
    assert len(first) == steps_per_epoch(70, 4) == 18
    # Within a group of batches the examples are ordered by length: little padding.
    group = [i for batch in first[:8] for i in batch]
    assert [lengths[i] for i in group] == sorted((lengths[i] for i in group), reverse=True)
