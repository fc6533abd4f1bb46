"""Which Ray node a replica's actor should prefer, so that a deployment's replicas land on
different nodes.

Ray's ``SPREAD`` strategy is a round robin over the nodes shared by every actor: with two
deployments starting at once, both replicas of one may land on the same node. So the actor of a
replica prefers the node that holds the fewest replicas of its deployment (then the fewest
replicas of any deployment) among the live nodes big enough for it (their total CPUs, memory
and custom resources), with a *soft* node affinity that spills to another node when that one is
busy (as Ray Serve spreads its replicas). A replica counts on the node chosen for it from the
moment its actor is made (several may start at once), then on the node it was placed on, until
its run ends. With one such node, none, or a label selector (which Ray applies itself, and does
not combine with a node affinity), Ray's ``SPREAD`` decides.

Pure apart from a lock: the nodes are given as ``ray.nodes()`` lists them.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


def _big_enough(node: dict[str, Any], options: dict[str, Any]) -> bool:
    total = node.get("Resources", {})
    asked = {"CPU": options.get("num_cpus", 0), "memory": options.get("memory", 0)}
    asked.update(options.get("resources", {}))
    return all(total.get(name, 0) >= amount for name, amount in asked.items())


class Spreader:
    """The nodes chosen for, or holding, each replica of each deployment."""

    def __init__(self) -> None:
        self._homes: dict[str, dict[str, str]] = {}  # deployment -> replica id -> node id
        self._lock = threading.Lock()

    def choose(
        self, nodes: list[dict[str, Any]], options: dict[str, Any], deployment: str, replica: str
    ) -> str | None:
        """The id of the node the actor of ``replica`` should prefer, or None (let Ray
        spread); records the choice."""
        if options.get("label_selector"):
            return None
        fit = [n for n in nodes if n.get("Alive") and _big_enough(n, options)]
        if len(fit) < 2:
            return None
        with self._lock:
            homes = self._homes.setdefault(deployment, {})
            homes.pop(replica, None)
            mine = Counter(homes.values())
            everyone = Counter(n for h in self._homes.values() for n in h.values())
            best = min(fit, key=lambda n: (mine[_short(n)], everyone[_short(n)]))
            homes[replica] = _short(best)
        return str(best["NodeID"])

    def placed(self, deployment: str, replica: str, node: str) -> None:
        """``replica`` runs on ``node`` (``<ip>/<start of its node id>``)."""
        with self._lock:
            self._homes.setdefault(deployment, {})[replica] = node.rsplit("/", 1)[-1]

    def forget(self, deployment: str, replica: str) -> None:
        """The run of ``replica`` ended: it holds no node."""
        with self._lock:
            homes = self._homes.get(deployment, {})
            homes.pop(replica, None)
            if not homes:
                self._homes.pop(deployment, None)


def _short(node: dict[str, Any]) -> str:
    """How a node is named in replica node names (the start of its id)."""
    return str(node["NodeID"])[:8]
