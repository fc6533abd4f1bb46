"""The cluster kinds this installation has: the built-in ``local`` and ``ray`` kinds (``ray``
imports the ray package only when it is used), registered the way a plugin registers, plus
every kind an installed package declares as a factory ``(settings, store) -> Cluster`` in the
``lmaas.clusters`` entry-point group."""

from __future__ import annotations

import importlib.metadata
import logging

from lmaas.controller.cluster.base import ClusterKinds
from lmaas.controller.cluster.local import LocalCluster
from lmaas.controller.cluster.ray import RayCluster

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lmaas.clusters"


def installed_kinds() -> ClusterKinds:
    kinds = ClusterKinds()
    kinds.register("local", LocalCluster)
    kinds.register("ray", RayCluster)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            kinds.register(entry.name, entry.load())
        except Exception:
            log.exception("cluster kind %r (%s) failed to load", entry.name, entry.value)
    return kinds
