"""Training examples as token ids and labels, and the batches the loop trains on.

A label is the token id the model should predict at that position, or :data:`IGNORE` where the
loss does not look (the prompt, a system or user turn, padding). The shift by one (the logits
at position t predict token t + 1) happens in the loss, as in Hugging Face models.

- chat: the conversation is rendered with the tokenizer's chat template and tokenized once;
  the characters of each learned assistant turn are found by rendering the conversation up to
  that turn (with the generation prompt, then with the turn), and every token overlapping them
  is labelled. A turn's end-of-turn marker (``<|im_end|>`` in ChatML) is inside that span, so
  the model learns to stop. A template that renders earlier turns differently once later ones
  follow falls back to finding the turn's text verbatim after the previous one.
- prompt/completion: the prompt (with the tokenizer's special tokens) then the completion and
  the end-of-sequence token; only the completion and the end token are labelled.
- text: the text and the end-of-sequence token, all labelled; a text longer than
  ``max_seq_len`` is cut into windows of ``max_seq_len`` tokens (nothing is dropped).

Chat and prompt/completion examples longer than ``max_seq_len`` keep their first
``max_seq_len`` tokens; one left with no label is skipped (and counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import torch

from lmaas.training.formats import (
    ChatExample,
    Example,
    PromptCompletionExample,
    TextExample,
    TrainingDataError,
)

IGNORE: Final = -100  # the label torch's cross-entropy ignores
# A batch of 8 such examples over a 49k vocabulary holds ~0.8 GB of float32 logits.
DEFAULT_MAX_SEQ_LEN: Final = 512
MEGABATCH: Final = 8  # batches of similar length are drawn from this many batches' examples

Span = tuple[int, int]  # [start, end) in characters


@dataclass(frozen=True, slots=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    line: int  # the line of the training file it came from

    @property
    def label_count(self) -> int:
        """Positions the loss counts (a label at position 0 has no token before it)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE)


@dataclass(slots=True)
class TokenizedSet:
    examples: list[TokenizedExample] = field(default_factory=list)
    truncated: int = 0  # examples cut to max_seq_len
    skipped: int = 0  # examples with nothing left to learn after the cut

    @property
    def tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)


def _eos(tokenizer: Any) -> list[int]:
    eos = tokenizer.eos_token_id
    return [] if eos is None else [int(eos)]


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    if not isinstance(text, str):
        raise TypeError("the chat template did not render to text")
    return text


def _turn_span(tokenizer: Any, turns: list[dict[str, str]], i: int, full: str) -> Span | None:
    """Where turn ``i`` (an assistant's) sits in ``full``, if the template renders each
    prefix of the conversation as a prefix of the whole."""
    try:
        before = _render(tokenizer, turns[:i], generation=True)
        through = _render(tokenizer, turns[: i + 1], generation=False).rstrip()
    except Exception:  # a template that refuses a partial conversation (an empty one, ...)
        return None
    if not (through.startswith(before) and full.startswith(through)):
        return None
    return len(before), len(through)


def chat_spans(tokenizer: Any, example: ChatExample) -> tuple[str, list[Span]]:
    """The rendered conversation and the character spans of its learned assistant turns."""
    turns = [{"role": m.role, "content": m.content} for m in example.messages]
    try:
        full = _render(tokenizer, turns, generation=False)
    except Exception as exc:  # a template's own error (a role order it refuses, ...)
        raise TrainingDataError(
            example.line, f"the model's chat template refused it: {exc}"
        ) from None
    spans: list[Span] = []
    cursor = 0
    for i, message in enumerate(example.messages):
        if not message.learn:
            continue
        span = _turn_span(tokenizer, turns, i, full)
        if span is None or span[0] < cursor:
            text = message.content.strip() or message.content  # templates often trim it
            at = full.find(text, cursor)
            if at < 0:
                raise TrainingDataError(
                    example.line,
                    f"messages[{i}] does not appear in the conversation as the model's chat "
                    "template renders it",
                )
            span = (at, at + len(text))
        spans.append(span)
        cursor = span[1]
    return full, spans


def _chat(tokenizer: Any, example: ChatExample) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingDataError(
            example.line,
            "the model's tokenizer has no chat template: use prompt/completion or text lines",
        )
    full, spans = chat_spans(tokenizer, example)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(t) for t in encoded["input_ids"]]
    labels = [IGNORE] * len(ids)
    for k, (start, end) in enumerate(encoded["offset_mapping"]):
        if any(start < span_end and end > span_start for span_start, span_end in spans):
            labels[k] = ids[k]
    return ids, labels


def _prompt_completion(
    tokenizer: Any, example: PromptCompletionExample
) -> tuple[list[int], list[int]]:
    prompt = [int(t) for t in tokenizer(example.prompt, add_special_tokens=True)["input_ids"]]
    completion = [
        int(t) for t in tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    ]
    completion += _eos(tokenizer)
    return prompt + completion, [IGNORE] * len(prompt) + completion


def _windows(ids: list[int], size: int) -> list[list[int]]:
    # A last window of one token has nothing to predict; it joins the one before.
    cuts = list(range(0, len(ids), size))
    if len(cuts) > 1 and len(ids) - cuts[-1] < 2:
        cuts.pop()
    return [ids[start : start + size] for start in cuts]


def tokenize_examples(
    examples: Sequence[Example], tokenizer: Any, max_seq_len: int
) -> TokenizedSet:
    """Token ids and labels of ``examples`` for ``tokenizer`` (a fast Hugging Face
    tokenizer); raises :class:`TrainingDataError` naming the line of one it cannot render."""
    if max_seq_len < 2:
        raise ValueError("max_seq_len must be at least 2")
    out = TokenizedSet()
    for example in examples:
        if isinstance(example, TextExample):
            ids = [int(t) for t in tokenizer(example.text, add_special_tokens=True)["input_ids"]]
            ids += _eos(tokenizer)
            for window in _windows(ids, max_seq_len):
                out.examples.append(TokenizedExample(window, list(window), example.line))
            continue
        if isinstance(example, ChatExample):
            ids, labels = _chat(tokenizer, example)
        else:
            ids, labels = _prompt_completion(tokenizer, example)
        if len(ids) > max_seq_len:
            out.truncated += 1
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        tokenized = TokenizedExample(ids, labels, example.line)
        if tokenized.label_count == 0:
            out.skipped += 1
            continue
        out.examples.append(tokenized)
    return out


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch, right-padded to its longest example: ``input_ids``, ``attention_mask`` and
    ``labels`` (:data:`IGNORE` on the padding)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
        mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def epoch_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int
) -> list[list[int]]:
    """The batches of one epoch as lists of example indices: a shuffle that depends only on
    ``seed`` and ``epoch`` (so a resumed run draws the same ones), then, within groups of
    :data:`MEGABATCH` batches, examples of similar length together so little is padding."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches: list[list[int]] = []
    group = batch_size * MEGABATCH
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: -lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    return batches


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)
