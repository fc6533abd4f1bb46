"""The resource pool kept up to date with its cluster.

The pool (``controller/pool.py``) is made from ``Cluster.capacity()`` at its first use. A
cluster's capacity can change while the server runs: nodes join and leave a Ray cluster. So
``ClusterPool`` reads it again every ``cluster.capacity_refresh_s`` seconds and before an API
request is checked against it (a node that joined a moment ago is counted), off the event loop.
When it grew, the pool tells its listeners, and the manager places the replicas that wait as
pending; when it shrank, the replicas placed stay (Ray re-places those of a lost node on the
nodes left, or keeps them waiting), and new ones are checked against what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from lmaas.controller.cluster.base import Cluster
from lmaas.controller.pool import Capacity, ResourcePool

log = logging.getLogger(__name__)


class ClusterPool:
    """The resource pool of ``cluster()`` (made on first use) and its refresh loop."""

    def __init__(
        self, cluster: Callable[[], Cluster], interval: float, on_room: Callable[[], None]
    ) -> None:
        """``interval``: seconds between reads (0: read once); ``on_room``: called when
        replicas stop or the capacity grew."""
        self._cluster = cluster
        self.interval = interval
        self._on_room = on_room
        self._pool: ResourcePool | None = None
        self._made = False
        self._loop: asyncio.Task[None] | None = None
        self._reading: asyncio.Lock | None = None

    def _read(self) -> Capacity | None:
        # A cluster kind written before the pool existed has no capacity(): count nothing.
        capacity = getattr(self._cluster(), "capacity", None)
        return capacity() if capacity is not None else None

    @property
    def pool(self) -> ResourcePool | None:
        """None when the cluster reports no capacity (it places replicas itself)."""
        if not self._made:
            offered = self._read()
            if offered is not None:
                self._pool = ResourcePool(offered)
                self._pool.listen(self._on_room)
            self._made = True
        return self._pool

    async def refresh(self) -> None:
        """Read the cluster's capacity again (in a thread) and resize the pool to it."""
        pool = self.pool
        if pool is None:
            return
        if self._reading is None:
            self._reading = asyncio.Lock()
        async with self._reading:  # one read at a time; a caller waits for the one running
            try:
                offered = await asyncio.to_thread(self._read)
            except Exception as exc:  # the cluster did not answer: keep what was known
                log.warning("cannot read the cluster's capacity: %s", exc)
                return
        if offered is None or offered == pool.capacity:
            return
        log.info("cluster capacity now %s: %s", offered.node, offered.describe())
        pool.resize(offered)

    def start(self) -> None:
        if self.interval > 0 and self.pool is not None and self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run(), name="capacity")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()

    async def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
