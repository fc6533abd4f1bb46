"""What a quantization job is asked to do, checked when it is created (the gateway calls
this; no model library here) and read back by the runner's handler (:mod:`lmaas.jobs.quantize`).

Checked, with a 4xx naming the field and nothing created: the source (a GGUF version of the
store: llama.cpp quantizes GGUF files only), the types (known to llama.cpp's quantizer, at
least one, none twice) and the held-out file (purpose ``fine-tune``, examples of one format).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from lmaas.errors import InvalidRequestError
from lmaas.store.catalog import VersionInfo
from lmaas.training.export import QUANT_TYPES
from lmaas.training.formats import ChatExample, Example, PromptCompletionExample, TextExample

KIND: Final = "quantize"
ID_PREFIX: Final = "qjob"
MAX_TYPES: Final = len(QUANT_TYPES)


def alias_of(qtype: str) -> str:
    """The alias a quantized version gets: the type in lower case (``q4_k_m``)."""
    return qtype.lower()


def check_types(types: Sequence[str]) -> list[str]:
    """The types asked for, in order; 400 (``types``) for none, an unknown one or a repeat."""
    allowed = ", ".join(QUANT_TYPES)
    if not types:
        raise InvalidRequestError(
            f"types is empty; give one or more of {allowed}", param="types", code="empty_types"
        )
    unknown = [t for t in types if t not in QUANT_TYPES]
    if unknown:
        raise InvalidRequestError(
            f"unknown quantization type {unknown[0]!r}; one of {allowed}",
            param="types",
            code="unknown_quantization_type",
        )
    repeated = sorted({t for t in types if types.count(t) > 1})
    if repeated:
        raise InvalidRequestError(
            f"types names {', '.join(repeated)} more than once",
            param="types",
            code="duplicate_types",
        )
    return list(types)


def check_source(version: VersionInfo) -> None:
    """400 (``version``) unless ``version`` is a GGUF file llama.cpp can quantize."""
    if version.format != "gguf":
        raise InvalidRequestError(
            f"{version.model}:{version.number} is a {version.format} folder; llama.cpp quantizes "
            "GGUF versions only",
            param="version",
            code="version_not_gguf",
        )


def held_out_text(examples: Iterable[Example]) -> str:
    """The text of a fine-tune file's examples, one document each: a text example's text, a
    chat's contents, a prompt and its completion."""
    documents = []
    for example in examples:
        if isinstance(example, TextExample):
            documents.append(example.text)
        elif isinstance(example, PromptCompletionExample):
            documents.append(f"{example.prompt}\n{example.completion}")
        elif isinstance(example, ChatExample):
            documents.append("\n".join(m.content for m in example.messages))
    return "\n\n".join(d.strip() for d in documents if d.strip())
