"""The resource pool: what a machine offers replicas, what each replica takes, and whether more
fit. Pure: no I/O, no clock; the cluster measures the machine (``Cluster.capacity``) and the
manager reads what a model takes from the catalog.

CPU is counted in threads. A replica holds ``engine.threads`` threads, or as many as the
machine has cores when that is 0 (llama.cpp and torch then start one thread per core); the
machine offers ``cores x cluster.cpu_overcommit`` threads, since an idle replica costs no CPU.
Memory is counted strictly: the machine's memory less ``cluster.reserve_memory_mb``.

A replica's memory has two parts. Its own (anonymous) memory: the runtime, its buffers and its
KV cache, ``kv_bytes_per_token x engine.context_size``. And, for llama.cpp, the GGUF file it
maps read-only: the page cache holds it once however many replicas of the same file run on a
machine, so it is counted once per file (``shared_key``). A transformers worker copies its
weights into its own memory. The runtime part is measured by the worker right after it loads
(``ModelInfo.memory_bytes``) and kept with the model version; before a version was ever loaded
it is estimated (``RUNTIME_ESTIMATE``), and so is an unknown KV size (``KV_ESTIMATE``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

from lmaas.config import EngineConfig

KiB: Final = 1024
MiB: Final = 1024**2
GiB: Final = 1024**3

Backend = Literal["llamacpp", "transformers"]

# A worker's own memory besides its KV cache before any was measured: Python, the model
# library, its compute buffers (a llama.cpp worker of the shipped 135M model measured 63 MiB, a
# transformers one 230 MiB plus its weights). Deliberately on the high side.
RUNTIME_ESTIMATE: Final[dict[Backend, int]] = {"llamacpp": 256 * MiB, "transformers": 512 * MiB}
# KV bytes per context token when the model's metadata did not tell: an 8B model with grouped
# query attention at f16 (32 layers x 8 KV heads x 128 x 2 x 2 bytes). Deliberately high.
KV_ESTIMATE: Final = 128 * KiB


def size(n: int | float) -> str:
    """Bytes for people: ``512 MiB``, ``3.2 GiB``."""
    if abs(n) >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{round(n / MiB)} MiB"


def _threads(n: int, more: str = "") -> str:
    return f"{n} {more}CPU thread{'s' if n != 1 else ''}"


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one machine (cluster node) offers replicas."""

    node: str
    cores: int
    memory_total: int
    memory_reserve: int = 0
    cpu_overcommit: float = 1.0
    # A cluster of several nodes: the cores of the largest, which a replica with engine.threads
    # 0 takes (0: one machine, ``cores``).
    node_cores: int = 0

    @property
    def replica_cores(self) -> int:
        """The cores a replica with ``engine.threads`` 0 starts a thread for each of."""
        return self.node_cores or self.cores

    @property
    def cpu_threads(self) -> int:
        return max(1, int(self.cores * self.cpu_overcommit))

    @property
    def memory(self) -> int:
        return max(0, self.memory_total - self.memory_reserve)

    def describe(self) -> str:
        cores = f"{self.cores} core{'s' if self.cores != 1 else ''}"
        cpu = f"{_threads(self.cpu_threads)} ({cores} x {self.cpu_overcommit:g})"
        memory = f"{size(self.memory)} memory"
        if self.memory_reserve:
            memory += f" ({size(self.memory_total)} less {size(self.memory_reserve)} reserved)"
        return f"{cpu} and {memory}"


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What is known of a model's memory (from its store version, or its file)."""

    backend: Backend
    file_bytes: int  # the weights on disk
    shared_key: str | None = None  # what identifies the file a llama.cpp worker maps
    memory_bytes: int | None = None  # measured: a loaded replica's own memory without its KV
    kv_bytes_per_token: int | None = None  # from the model's metadata or its worker

    def measured(self, memory_bytes: int, kv_bytes_per_token: int | None) -> ModelFacts:
        kv = kv_bytes_per_token if kv_bytes_per_token is not None else self.kv_bytes_per_token
        return replace(self, memory_bytes=memory_bytes, kv_bytes_per_token=kv)


@dataclass(frozen=True, slots=True)
class Need:
    """What one replica takes from its machine."""

    cpu_threads: int
    memory: int  # its own: runtime, buffers, KV cache
    shared_memory: int = 0  # a file mapped read-only, counted once per machine per shared_key
    shared_key: str | None = None
    measured: bool = False  # its runtime memory was measured (not estimated)

    def without_cpu(self) -> Need:
        """The need of a replica that takes over the CPU of one it replaces (a rolling update:
        the same traffic moves, so the CPU it needs moves with it; the memory of both sets is
        held until the old one stops)."""
        return replace(self, cpu_threads=0)

    def describe(self) -> str:
        how = "measured" if self.measured else "estimated"
        text = f"{size(self.memory)} ({how})"
        if self.cpu_threads:
            text = f"{_threads(self.cpu_threads)} and {text}"
        if self.shared_memory:
            text += f" + {size(self.shared_memory)} of weights shared by replicas of the file"
        return text


def replica_need(engine: EngineConfig, facts: ModelFacts, cores: int) -> Need:
    """What one replica of a model with ``facts`` run with ``engine`` takes on a machine with
    ``cores`` cores."""
    kv = facts.kv_bytes_per_token if facts.kv_bytes_per_token is not None else KV_ESTIMATE
    runtime = facts.memory_bytes
    if runtime is None:
        runtime = RUNTIME_ESTIMATE[facts.backend]
        if facts.backend == "transformers":
            runtime += facts.file_bytes
    mapped = facts.backend == "llamacpp"
    return Need(
        cpu_threads=engine.threads or cores,
        memory=runtime + kv * engine.context_size,
        shared_memory=facts.file_bytes if mapped else 0,
        shared_key=(facts.shared_key if mapped else None),
        measured=facts.memory_bytes is not None,
    )


@dataclass(frozen=True, slots=True)
class Usage:
    cpu_threads: int
    memory: int
    replicas: int


@dataclass(frozen=True, slots=True)
class Fit:
    """Whether some replicas fit, and if not what is missing (a sentence in ``reason``)."""

    ok: bool
    cpu_threads_short: int = 0
    memory_short: int = 0
    reason: str | None = None


class ResourcePool:
    """The replicas placed on one machine, each holding its ``Need`` under a key (its id).

    ``fit`` says whether more replicas fit beside those placed, ``reserve`` places one,
    ``release`` frees one and ``resize`` changes what the machine offers (both tell the
    listeners, which may place waiting replicas).
    """

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._held: dict[str, Need] = {}
        self._listeners: list[Callable[[], None]] = []

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every release, and after the capacity grew."""
        self._listeners.append(callback)

    def holds(self, key: str) -> bool:
        return key in self._held

    def usage(self) -> Usage:
        return self._total(self._held.values(), len(self._held))

    def _total(self, needs: Iterable[Need], replicas: int) -> Usage:
        cpu = memory = 0
        shared: dict[str | None, int] = {}
        for need in needs:
            cpu += need.cpu_threads
            memory += need.memory
            if need.shared_key is None:
                memory += need.shared_memory
            else:
                shared[need.shared_key] = max(shared.get(need.shared_key, 0), need.shared_memory)
        return Usage(cpu, memory + sum(shared.values()), replicas)

    def fit(self, needs: Sequence[Need]) -> Fit:
        """Whether ``needs`` (new replicas) fit together beside the replicas placed."""
        if not needs:
            return Fit(ok=True)
        used = self.usage()
        after = self._total([*self._held.values(), *needs], used.replicas + len(needs))
        cap = self.capacity
        cpu_short = max(0, after.cpu_threads - cap.cpu_threads)
        memory_short = max(0, after.memory - cap.memory)
        if not cpu_short and not memory_short:
            return Fit(ok=True)
        missing = []
        if cpu_short:
            missing.append(_threads(cpu_short, "more "))
        if memory_short:
            missing.append(f"{size(memory_short)} more memory")
        if len(needs) == 1:
            taken = f"a replica takes {needs[0].describe()}"
        else:
            taken = (
                f"{len(needs)} replicas take {_threads(after.cpu_threads - used.cpu_threads)} "
                f"and {size(after.memory - used.memory)} (each {needs[0].describe()})"
            )
        reason = (
            f"needs {' and '.join(missing)} than {cap.node} has free: {taken}; {cap.node} "
            f"offers {cap.describe()}, of which {used.replicas} replicas hold "
            f"{_threads(used.cpu_threads)} and {size(used.memory)}"
        )
        return Fit(False, cpu_short, memory_short, reason)

    def reserve(self, key: str, need: Need) -> Fit:
        """Place one replica if it fits (``Fit.ok``); nothing changes otherwise."""
        fit = self.fit([need])
        if fit.ok:
            self._held[key] = need
        return fit

    def remeasure(self, key: str, need: Need) -> None:
        """A placed replica was measured: it holds the memory of ``need`` from now on (and
        the CPU it held), fit or not, since it runs already."""
        held = self._held.get(key)
        if held is not None:
            self._held[key] = replace(need, cpu_threads=held.cpu_threads)

    def move_cpu(self, key: str, cpu_threads: int) -> None:
        """Change the CPU threads a placed replica holds (a rolling update moves them from the
        old replicas to the new ones)."""
        held = self._held.get(key)
        if held is not None:
            self._held[key] = replace(held, cpu_threads=cpu_threads)

    def resize(self, capacity: Capacity) -> None:
        """The cluster offers ``capacity`` now (a node joined or left). Replicas placed stay
        placed even when they no longer fit; when it grew, listeners hear of it (waiting
        replicas may fit now)."""
        before, self.capacity = self.capacity, capacity
        if capacity.cpu_threads > before.cpu_threads or capacity.memory > before.memory:
            for callback in list(self._listeners):
                callback()

    def release(self, key: str) -> None:
        """The replica ``key`` stopped; listeners hear of it."""
        if self._held.pop(key, None) is None:
            return
        for callback in list(self._listeners):
            callback()
