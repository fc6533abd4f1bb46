"""Real English text for the training benchmark: CPython's documentation topics, split by document.

The text is ``pydoc_data.topics.topics``: the Python Language Reference's sections as plain text
(what ``help("if")`` shows), written by people, shipped with every CPython, so nothing is
downloaded and a fresh machine has it. It is prose with grammar rules and short code examples
between paragraphs. Which Python ships it decides the text (3.11.7 here: 79 documents, about
465,000 characters): the results record the version and a digest of the corpus.

Alternatives weighed: Debian's ``fortunes`` packages and PyPI's ``fortunes-*`` (quotes: short,
one-line documents, little to learn across them), the licence texts in
``/usr/share/common-licenses`` (a dozen, mostly the GPL family: near copies of each other, so
a held-out one would leak), the changelogs under ``/usr/share/doc`` (mostly machine-made
version notes), and public-domain books from Project Gutenberg through PyPI packages (they fetch
the text from the web at run time).

Documents are split once, by name with a fixed seed, into a training part and a held-out part,
so no held-out text is seen in training, not even a window of it. Each document becomes one
"text" line of a training file (the lmaas extension for continued pretraining), read by the
project's own parser and cut into windows by the project's tokenization.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmaas.training import data, formats


@dataclass(frozen=True, slots=True)
class Corpus:
    train: dict[str, str]  # document name -> text
    held_out: dict[str, str]
    digest: str  # sha256 of every document, in name order
    source: str

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.digest,
            "documents": len(self.train) + len(self.held_out),
            "train_documents": len(self.train),
            "held_out_documents": len(self.held_out),
            "train_chars": sum(len(t) for t in self.train.values()),
            "held_out_chars": sum(len(t) for t in self.held_out.values()),
            "held_out_names": sorted(self.held_out),
        }


def python_doc_topics() -> dict[str, str]:
    """The documentation topics of the running CPython, by topic name."""
    from pydoc_data.topics import topics

    return {str(name): str(text) for name, text in topics.items() if str(text).strip()}


def split_documents(
    documents: dict[str, str], *, held_out_fraction: float = 0.15, seed: int = 0
) -> Corpus:
    """A fixed split by document: the names sorted, shuffled with ``seed``, the first
    ``held_out_fraction`` of them held out (at least one, and at least one left to train)."""
    if len(documents) < 2:
        raise ValueError("at least two documents are needed to hold one out")
    names = sorted(documents)
    random.Random(seed).shuffle(names)
    n_held = min(len(names) - 1, max(1, round(held_out_fraction * len(names))))
    held = set(names[:n_held])
    digest = hashlib.sha256()
    for name in sorted(documents):
        digest.update(name.encode() + b"\0" + documents[name].encode() + b"\0")
    python = ".".join(str(v) for v in sys.version_info[:3])
    return Corpus(
        train={n: documents[n] for n in sorted(documents) if n not in held},
        held_out={n: documents[n] for n in sorted(documents) if n in held},
        digest=digest.hexdigest(),
        source=f"CPython {python} pydoc_data.topics",
    )


def text_examples(documents: dict[str, str]) -> list[formats.Example]:
    """One "text" example per document, through the training file parser."""
    lines = [json.dumps({"text": text}) for _, text in sorted(documents.items())]
    return formats.read_examples(lines)


def windows(
    documents: dict[str, str], tokenizer: Any, max_seq_len: int
) -> list[data.TokenizedExample]:
    """The documents as token windows of at most ``max_seq_len`` tokens (every token learned)."""
    return data.tokenize_examples(text_examples(documents), tokenizer, max_seq_len).examples


def filled(
    examples: Sequence[data.TokenizedExample], count: int, *, seed: int = 0
) -> list[data.TokenizedExample]:
    """``count`` examples: whole shuffled passes over ``examples``, then part of one more. One
    epoch over the result is a run of exactly ``count / batch_size`` steps in which every
    window is seen as evenly as it can be."""
    if not examples:
        raise ValueError("no examples to fill from")
    rng = random.Random(seed)
    out: list[data.TokenizedExample] = []
    while len(out) < count:
        order = list(examples)
        rng.shuffle(order)
        out.extend(order[: count - len(out)])
    return out
