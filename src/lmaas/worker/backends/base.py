"""What the step loop needs from a generation backend, whichever model library is behind it.

A backend holds sequence *slots*: each slot is one sequence's KV cache. The loop asks it to
decode a batch of (slot, position, token) entries, then reads the logits of the entries that
asked for them by their index in the batch, samples with a per-sequence sampler, and moves
or clears slots for beam search. llama.cpp (``llamacpp/generate.py``) keeps every slot in one
unified KV cache; transformers (``transformers/generate.py``) keeps one tensor cache per slot.
The prefix cache (``scheduler/prefix.py``) keeps cells under sequence ids past the slots and
moves them with ``copy_prefix``.

A backend refuses an input by raising an ``lmaas.errors`` type (``InvalidRequestError`` with the
parameter at fault), which reaches the client as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from lmaas.protocol.engine import SamplingParams


@dataclass(frozen=True, slots=True)
class BatchEntry:
    slot: int
    pos: int
    token: int
    want_logits: bool


class GenerationBackend(Protocol):
    n_vocab: int
    kv_capacity: int
    max_model_len: int
    # KV sequence ids past the slots (``max_num_seqs`` onwards) that the prefix cache may use
    # to keep cells; 0 turns prefix caching off.
    prefix_ids: int

    def tokenize(self, text: str, *, add_bos: bool, parse_special: bool) -> list[int]: ...

    def piece(self, token: int) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...

    def make_sampler(self, params: SamplingParams) -> Any:
        """A sampler for one sequence; ``InvalidRequestError`` if ``params`` cannot be served."""

    def free_sampler(self, sampler: Any) -> None: ...

    def sample(self, sampler: Any, batch_index: int) -> int: ...

    def logits(self, batch_index: int) -> npt.NDArray[np.float32]: ...

    def logprobs_row(self, batch_index: int) -> npt.NDArray[np.float32]: ...

    def decode(self, entries: Sequence[BatchEntry]) -> int: ...

    def clear_slot(self, slot: int) -> None: ...

    def copy_slot(self, src: int, dst: int) -> None: ...

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make sequence id ``dst`` hold exactly ``src``'s cells of positions ``[0, n)``."""
