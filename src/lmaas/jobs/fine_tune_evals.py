"""The held-out set of a fine-tuning job as eval items, so that the base and the fine-tuned
model are compared through the evals machinery (``/v1/evals``), as served.

The runner writes the validation file's examples as an ``evals`` file of
``{"item": {"prompt", "completion"}}`` lines (a chat example: its conversation up to the last
assistant turn through the model's chat template, and that turn; a prompt/completion example
as it is; a text example: its first words, and the rest). Once the result is deployed, the
gateway makes one eval per model with a ``perplexity`` grader of the completion after the
prompt, and a jsonl run of it; each run's figures are attached to the version it scored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Final

from lmaas.training.formats import ChatExample, Example, PromptCompletionExample

ITEM_SCHEMA: Final = {
    "type": "object",
    "properties": {"prompt": {"type": "string"}, "completion": {"type": "string"}},
    "required": ["prompt", "completion"],
}
GRADER: Final = {
    "type": "perplexity",
    "name": "held-out perplexity",
    "input": "{{item.completion}}",
    "prompt": "{{item.prompt}}",
}
_TEXT_PROMPT_WORDS: Final = 8


def eval_item(example: Example, tokenizer: Any) -> dict[str, str] | None:
    """The (prompt, completion) of one held-out example, or None if it has none."""
    if isinstance(example, PromptCompletionExample):
        return {"prompt": example.prompt, "completion": example.completion}
    if isinstance(example, ChatExample):
        turns = [{"role": m.role, "content": m.content} for m in example.messages]
        last = max((i for i, m in enumerate(example.messages) if m.role == "assistant"), default=-1)
        if last < 1:
            return None
        prompt = tokenizer.apply_chat_template(
            turns[:last], tokenize=False, add_generation_prompt=True
        )
        return {"prompt": str(prompt), "completion": turns[last]["content"]}
    words = example.text.split(" ")
    if len(words) <= _TEXT_PROMPT_WORDS:
        return None
    return {
        "prompt": " ".join(words[:_TEXT_PROMPT_WORDS]),
        "completion": " " + " ".join(words[_TEXT_PROMPT_WORDS:]),
    }


def eval_lines(examples: Iterable[Example], tokenizer: Any) -> Iterator[bytes]:
    for example in examples:
        item = eval_item(example, tokenizer)
        if item is not None and item["completion"].strip():
            yield json.dumps({"item": item}, ensure_ascii=False).encode() + b"\n"
