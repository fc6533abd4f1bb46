"""The prefix cache's index: which KV sequence ids hold the cells of which token prefixes.

Pure bookkeeping, like the rest of the scheduler: the loop moves the cells. An entry is a KV
sequence id outside the running slots (``seq_ids``) that holds the cells of positions
``[0, len(tokens))`` of ``tokens``: what a finished or preempted sequence had computed. A new
request copies the cells of its longest cached prefix into its slot (in llama.cpp's unified KV
cache a copy only adds a sequence id to the cells, so nothing is duplicated) and prefills only
the rest.

Entries are few (tens) and prompts at most a context long, so a match scans every entry and
compares tokens vectorised; that is exact to the token, so a shared prefix never has to end on
a block boundary. An entry that is a prefix of a newer one is dropped (the newer one answers
every match it would), and a prefix already covered by an entry is not stored again.

Eviction is least recently used (matched or stored), under two bounds: the number of ids and
the cells the scheduler lets the cache hold (``evict_lru`` when it needs room). Dropping an
entry only removes its sequence id from the cells: cells a running sequence copied stay
with that sequence, so eviction never takes cells a running sequence needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def common_prefix(a: npt.NDArray[np.int32], b: npt.NDArray[np.int32]) -> int:
    """The length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


@dataclass(slots=True)
class CachedPrefix:
    seq_id: int
    tokens: npt.NDArray[np.int32]
    last_used: int

    @property
    def cells(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True, slots=True)
class Match:
    """Copy the cells of positions ``[0, length)`` of KV sequence ``seq_id``."""

    seq_id: int
    length: int


class PrefixIndex:
    def __init__(
        self, seq_ids: Iterable[int], on_drop: Callable[[int], None] | None = None
    ) -> None:
        self._on_drop = on_drop  # told at once of each dropped id (the scheduler's mirror)
        self._free: list[int] = sorted(seq_ids, reverse=True)
        self.capacity = len(self._free)
        self._entries: dict[int, CachedPrefix] = {}
        # Ids whose cells are to be cleared at the next step; reusable only after that.
        self._dropping: list[int] = []
        self._clock = 0

    # --- queries -------------------------------------------------------------------------

    @property
    def cells(self) -> int:
        """Cells the entries hold, each entry counted whole (they may share cells)."""
        return sum(e.cells for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[CachedPrefix]:
        return sorted(self._entries.values(), key=lambda e: e.last_used)

    def match(
        self,
        tokens: npt.NDArray[np.int32],
        limit: int,
        running: Sequence[tuple[int, npt.NDArray[np.int32]]] = (),
    ) -> Match | None:
        """The longest cached prefix of ``tokens``, at most ``limit`` tokens long.

        ``running`` adds the computed tokens of running sequences, by slot, as sources: their
        cells are as good as a cached entry's for as long as this step lasts.
        """
        best: Match | None = None
        entry_of: CachedPrefix | None = None
        for entry in self._entries.values():
            n = min(common_prefix(tokens, entry.tokens), limit)
            if n > 0 and (best is None or n > best.length):
                best, entry_of = Match(entry.seq_id, n), entry
        for slot, computed in running:
            n = min(common_prefix(tokens, computed), limit)
            if n > 0 and (best is None or n > best.length):
                best, entry_of = Match(slot, n), None
        if entry_of is not None:
            entry_of.last_used = self._tick()
        return best

    # --- changes -------------------------------------------------------------------------

    def insert(self, tokens: npt.NDArray[np.int32], *, keep: int | None = None) -> int | None:
        """Index ``tokens``' cells; returns the id to copy them into, or ``None`` when an
        entry already covers them (it is touched instead) or none can be had.

        ``keep`` is an id that must not be evicted to make room (the source of a copy
        planned in the same step)."""
        if len(tokens) == 0:
            return None
        for entry in self._entries.values():
            if len(entry.tokens) >= len(tokens) and common_prefix(entry.tokens, tokens) == len(
                tokens
            ):
                entry.last_used = self._tick()
                return None
        for entry in list(self._entries.values()):
            if common_prefix(entry.tokens, tokens) == len(entry.tokens) and entry.seq_id != keep:
                self._drop(entry.seq_id)
        if not self._free:
            victim = self._lru(exclude=keep)
            if victim is None:
                return None
            self._drop(victim)
            if not self._free:
                return None  # the freed id is reusable only after its cells are cleared
        seq_id = self._free.pop()
        self._entries[seq_id] = CachedPrefix(seq_id, tokens.copy(), self._tick())
        return seq_id

    def evict_lru(self, *, exclude: int | None = None) -> int | None:
        """Drop the least recently used entry; returns its cells (``None``: nothing to drop)."""
        victim = self._lru(exclude=exclude)
        if victim is None:
            return None
        cells = self._entries[victim].cells
        self._drop(victim)
        return cells

    def clear(self) -> None:
        for seq_id in list(self._entries):
            self._drop(seq_id)

    def take_dropped(self) -> list[int]:
        """Ids whose cells the loop must clear now; they are free again afterwards."""
        dropped, self._dropping = self._dropping, []
        self._free += dropped
        return dropped

    # --- inside --------------------------------------------------------------------------

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _lru(self, *, exclude: int | None) -> int | None:
        candidates = [e for e in self._entries.values() if e.seq_id != exclude]
        if not candidates:
            return None
        return min(candidates, key=lambda e: e.last_used).seq_id

    def _drop(self, seq_id: int) -> None:
        del self._entries[seq_id]
        self._dropping.append(seq_id)
        if self._on_drop is not None:
            self._on_drop(seq_id)


class CellMirror:
    """The KV cells each sequence id holds, and how many ids hold each cell: llama.cpp's
    unified cache as the scheduler's moves leave it, so the cells in use are known exactly
    although cached prefixes and the sequences that copied them share cells.

    Cells are numbered as they are made and listed per id by position. ``copy_prefix`` shares
    cells (one more holder each), ``clear`` lets go of them, and a cell with no holder left is
    free, as in llama.cpp. A beam search's slots are not mirrored (the scheduler bounds them
    from above instead): its beams move cells between slots without the scheduler.
    """

    def __init__(self) -> None:
        self._held: dict[int, list[int]] = {}
        self._holders: dict[int, int] = {}
        self._next = 0

    @property
    def used(self) -> int:
        return len(self._holders)

    def held(self, seq_id: int) -> int:
        return len(self._held.get(seq_id, ()))

    def append(self, seq_id: int, n: int) -> None:
        """``n`` new cells at the next positions of ``seq_id``."""
        if n <= 0:
            return
        new = range(self._next, self._next + n)
        self._next += n
        self._holders.update(dict.fromkeys(new, 1))
        self._held.setdefault(seq_id, []).extend(new)

    def create(self, seq_id: int, n: int) -> None:
        """``seq_id`` holds ``n`` cells of its own (a copy the mirror has no source for)."""
        self.clear(seq_id)
        self.append(seq_id, n)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        self.clear(dst)
        cells = self._held.get(src, [])[:n]
        if not cells:
            return
        holders = self._holders
        for cell in cells:
            holders[cell] += 1
        self._held[dst] = cells

    def clear(self, seq_id: int) -> None:
        holders = self._holders
        for cell in self._held.pop(seq_id, ()):
            left = holders[cell] - 1
            if left:
                holders[cell] = left
            else:
                del holders[cell]
