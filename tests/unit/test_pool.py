"""The resource pool's fit decisions (pure), what a replica needs, and what the machine and the
worker measure."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmaas.config import EngineConfig, Settings
from lmaas.controller.cluster.machine import cgroup_cores, cgroup_memory, local_capacity
from lmaas.controller.pool import (
    KV_ESTIMATE,
    RUNTIME_ESTIMATE,
    Capacity,
    GiB,
    MiB,
    ModelFacts,
    Need,
    ResourcePool,
    Usage,
    replica_need,
)
from lmaas.store.gguf import kv_bytes_per_token
from lmaas.worker.resources import hf_kv_bytes_per_token, private_bytes

# The shipped SmolLM2-135M Q4_1 as measured: 94 MiB file, 63 MiB own memory besides its KV
# cache, 23,040 KV bytes per token (30 layers x 3 KV heads x 64 x 2 x 2 bytes).
SMOLLM = ModelFacts(
    backend="llamacpp",
    file_bytes=94 * MiB,
    shared_key="sha256:smol",
    memory_bytes=63 * MiB,
    kv_bytes_per_token=23_040,
)
TWO_CORES = Capacity("vm", cores=2, memory_total=24 * GiB, memory_reserve=1 * GiB, cpu_overcommit=8)


def test_a_replica_needs_its_threads_or_every_core_and_its_kv_cache() -> None:
    need = replica_need(EngineConfig(), SMOLLM, cores=2)
    assert need.cpu_threads == 2  # threads=0: llama.cpp starts one thread per core
    assert need.memory == 63 * MiB + 23_040 * 8192  # its own memory, the KV cache of 8192 cells
    assert (need.shared_memory, need.shared_key, need.measured) == (94 * MiB, "sha256:smol", True)
    small = replica_need(EngineConfig(threads=1, context_size=1024), SMOLLM, cores=64)
    assert (small.cpu_threads, small.memory) == (1, 63 * MiB + 23_040 * 1024)


def test_before_any_measurement_the_need_is_estimated() -> None:
    unknown = ModelFacts(backend="llamacpp", file_bytes=4 * GiB, shared_key="sha256:big")
    need = replica_need(EngineConfig(context_size=4096), unknown, cores=8)
    assert need.memory == RUNTIME_ESTIMATE["llamacpp"] + KV_ESTIMATE * 4096
    assert need.shared_memory == 4 * GiB and not need.measured
    # transformers copies its weights into the process: they are its own, not shared
    hf = ModelFacts(backend="transformers", file_bytes=90 * MiB, kv_bytes_per_token=0)
    need = replica_need(EngineConfig(), hf, cores=2)
    assert need.memory == RUNTIME_ESTIMATE["transformers"] + 90 * MiB
    assert (need.shared_memory, need.shared_key) == (0, None)


def test_the_issue_s_32_replicas_on_two_cores_do_not_fit_but_eight_do() -> None:
    pool = ResourcePool(TWO_CORES)
    need = replica_need(EngineConfig(), SMOLLM, cores=2)
    assert pool.fit([need] * 8).ok
    fit = pool.fit([need] * 32)
    assert not fit.ok
    assert (fit.cpu_threads_short, fit.memory_short) == (64 - 16, 0)
    assert fit.reason is not None
    assert fit.reason.startswith("needs 48 more CPU threads than vm has free: 32 replicas take ")
    assert "16 CPU threads (2 cores x 8)" in fit.reason
    assert "23.0 GiB memory (24.0 GiB less 1.0 GiB reserved)" in fit.reason


def test_memory_is_strict_and_a_shared_file_counts_once() -> None:
    pool = ResourcePool(Capacity("n", cores=64, memory_total=1 * GiB))
    one = Need(cpu_threads=1, memory=200 * MiB, shared_memory=300 * MiB, shared_key="a")
    assert pool.fit([one, one, one]).ok  # 3 x 200 + 300 once = 900 MiB
    fit = pool.fit([one] * 4)  # 4 x 200 + 300 = 1100 MiB
    assert (fit.ok, fit.cpu_threads_short, fit.memory_short) == (False, 0, 76 * MiB)
    assert fit.reason is not None and "76 MiB more memory" in fit.reason
    other = Need(cpu_threads=1, memory=200 * MiB, shared_memory=300 * MiB, shared_key="b")
    assert pool.fit([one, other]).ok  # 400 + 300 + 300 = 1000 MiB
    assert not pool.fit([one, other, other]).ok  # another file of the same size: 1200 MiB


def test_both_shortfalls_are_named() -> None:
    pool = ResourcePool(Capacity("n", cores=1, memory_total=1 * GiB, cpu_overcommit=2))
    fit = pool.fit([Need(cpu_threads=3, memory=2 * GiB)])
    assert (fit.cpu_threads_short, fit.memory_short) == (1, 1 * GiB)
    assert fit.reason is not None
    assert fit.reason.startswith("needs 1 more CPU thread and 1.0 GiB more memory than n has")
    assert "a replica takes 3 CPU threads" in fit.reason


def test_reservations_fill_the_pool_and_releases_free_it() -> None:
    pool = ResourcePool(Capacity("n", cores=2, memory_total=8 * GiB, cpu_overcommit=2))
    heard: list[int] = []
    pool.listen(lambda: heard.append(pool.usage().replicas))
    need = Need(cpu_threads=2, memory=1 * GiB, shared_memory=1 * GiB, shared_key="f")
    assert pool.reserve("a", need).ok and pool.reserve("b", need).ok
    assert pool.usage().cpu_threads == 4 and pool.usage().memory == 3 * GiB
    refused = pool.reserve("c", need)
    assert not refused.ok and not pool.holds("c") and pool.usage().replicas == 2
    assert (
        refused.reason is not None and "2 replicas hold 4 CPU threads and 3.0 GiB" in refused.reason
    )
    pool.release("nobody")  # not held: nothing to tell
    assert heard == []
    pool.release("a")
    assert heard == [1] and pool.reserve("c", need).ok


def test_a_measurement_keeps_the_cpu_and_a_roll_moves_it() -> None:
    pool = ResourcePool(Capacity("n", cores=4, memory_total=8 * GiB))
    estimate = Need(cpu_threads=0, memory=2 * GiB)  # a new replica of a rolling update
    pool.reserve("new", estimate)
    pool.remeasure("new", Need(cpu_threads=4, memory=300 * MiB, measured=True))
    assert pool.usage() == Usage(0, 300 * MiB, 1)  # the CPU stayed at 0
    pool.move_cpu("new", 4)
    assert pool.usage().cpu_threads == 4
    assert not pool.fit([Need(cpu_threads=1, memory=0)]).ok


def test_the_gguf_metadata_tells_the_kv_size() -> None:
    meta: dict[str, object] = {
        "general.architecture": "llama",
        "llama.block_count": 30,
        "llama.embedding_length": 576,
        "llama.attention.head_count": 9,
        "llama.attention.head_count_kv": 3,
    }
    assert kv_bytes_per_token(meta) == 23_040  # type: ignore[arg-type]
    per_layer = {**meta, "llama.block_count": 2, "llama.attention.head_count_kv": [1, 3]}
    assert kv_bytes_per_token(per_layer) == 4 * 128 * 2  # type: ignore[arg-type]
    explicit = {**meta, "llama.attention.key_length": 128, "llama.attention.value_length": 128}
    assert kv_bytes_per_token(explicit) == 30 * 3 * 256 * 2  # type: ignore[arg-type]
    assert kv_bytes_per_token({"general.architecture": "llama"}) is None
    assert kv_bytes_per_token({}) is None


def test_a_hugging_face_config_tells_the_kv_size() -> None:
    class Config:
        num_hidden_layers = 24
        num_attention_heads = 14
        num_key_value_heads = 2
        hidden_size = 896

    assert hf_kv_bytes_per_token(Config(), 4) == 24 * 2 * 64 * 2 * 4
    assert hf_kv_bytes_per_token(object(), 4) == 0  # not a decoder it knows


def test_the_worker_reads_its_own_memory(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmRSS:\t  376000 kB\nRssAnon:\t  251000 kB\n")
    assert private_bytes(status) == 251000 * 1024
    status.write_text("Name:\tpython\n")
    assert private_bytes(status) is None
    assert private_bytes(tmp_path / "missing") is None
    assert (private_bytes() or 0) > 1 * MiB  # this process, on Linux


@pytest.mark.parametrize(
    ("files", "cores", "memory"),
    [
        ({"cpu.max": "max 100000", "memory.max": "max"}, None, None),
        ({"cpu.max": "150000 100000", "memory.max": str(2 * GiB)}, 2, 2 * GiB),
        (
            {"cpu/cpu.cfs_quota_us": "-1", "memory/memory.limit_in_bytes": str(2**63 - 4096)},
            None,
            None,
        ),
        ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 3, None),
    ],
)
def test_cgroup_limits_cap_the_machine(
    tmp_path: Path, files: dict[str, str], cores: int | None, memory: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    assert (cgroup_cores(tmp_path), cgroup_memory(tmp_path)) == (cores, memory)


def test_the_local_capacity_follows_the_settings() -> None:
    settings = Settings(cluster={"cpus": 3, "memory_mb": 4096, "reserve_memory_mb": 512})  # type: ignore[arg-type]
    cap = local_capacity("here", settings.cluster)
    assert (cap.node, cap.cores, cap.cpu_threads) == ("here", 3, 24)  # 8 threads per core
    assert (cap.memory_total, cap.memory) == (4 * GiB, 3584 * MiB)
    measured = local_capacity("here", Settings().cluster)
    assert measured.cores >= 1 and measured.memory_total > 256 * MiB
