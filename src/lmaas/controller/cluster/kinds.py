"""The cluster kinds this installation has: the built-in ``local`` kind, registered the way a
plugin registers, plus every kind an installed package declares as a factory
``(settings, store) -> Cluster`` in the ``lmaas.clusters`` entry-point group."""

from __future__ import annotations

import importlib.metadata
import logging

from lmaas.controller.cluster.base import ClusterKinds
from lmaas.controller.cluster.local import LocalCluster

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lmaas.clusters"


def installed_kinds() -> ClusterKinds:
    kinds = ClusterKinds()
    kinds.register("local", LocalCluster)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            kinds.register(entry.name, entry.load())
        except Exception:
            log.exception("cluster kind %r (%s) failed to load", entry.name, entry.value)
    return kinds
