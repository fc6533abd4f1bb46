"""This machine's capacity as the resource pool counts it: the cores this process may run on
and the memory it may use, each capped by the container's cgroup limit when there is one
(cgroup v2 ``cpu.max`` and ``memory.max``, or v1's CFS quota and memory limit), and the
``cluster`` settings (explicit ``cpus``/``memory_mb``, the reserve, the overcommit)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from lmaas.config import ClusterSettings
from lmaas.controller.pool import Capacity, MiB

_CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cores(root: Path = _CGROUP) -> int | None:
    """Cores a cgroup CPU quota allows (rounded up), or None without a quota."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota.isdigit() and period.isdigit() and int(period) > 0:
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    quota_v1 = _read(root / "cpu" / "cpu.cfs_quota_us")
    period_v1 = _read(root / "cpu" / "cpu.cfs_period_us")
    if quota_v1 and period_v1 and quota_v1.isdigit() and period_v1.isdigit() and int(period_v1):
        return max(1, math.ceil(int(quota_v1) / int(period_v1)))
    return None


def cgroup_memory(root: Path = _CGROUP) -> int | None:
    """A cgroup memory limit in bytes, or None without one."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        text = _read(path)
        # v1 writes "no limit" as a huge number (a page-rounded 2**63 - 1)
        if text is not None and text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def machine_cores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cores()
    return min(cores, quota) if quota is not None else cores


def machine_memory() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = cgroup_memory()
    return min(total, limit) if limit is not None else total


def local_capacity(node: str, settings: ClusterSettings) -> Capacity:
    return Capacity(
        node=node,
        cores=settings.cpus or machine_cores(),
        memory_total=settings.memory_mb * MiB if settings.memory_mb else machine_memory(),
        memory_reserve=settings.reserve_memory_mb * MiB,
        cpu_overcommit=settings.cpu_overcommit,
    )
