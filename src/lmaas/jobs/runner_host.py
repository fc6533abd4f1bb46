"""A job runner on a Ray node: the actor the gateway's :mod:`lmaas.jobs.ray_runners` makes.

The actor is an asyncio actor (its methods are coroutines on the actor's own event loop):
``node()`` says where Ray placed it, ``run(config_json, secret)`` runs the job loop
(:func:`lmaas.jobs.runner.run_jobs`) until ``stop()`` is called and returns then, and
``wake()`` says a job was queued. The secret is this run's, made by the gateway and sent
through Ray: the gateway accepts it from any address, for this runner's requests, its input
blobs and its output files. This module does not import Ray (the actor class is made with
``ray.remote``), so it is tested without a cluster.
"""

from __future__ import annotations

import asyncio
import logging

from lmaas.jobs.runner import RunnerConfig, run_jobs
from lmaas.raynodes import node_identity
from lmaas.telemetry.logging import setup_logging

log = logging.getLogger(__name__)


class RunnerHost:
    """One run of a job runner on a Ray node (see the module doc)."""

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    async def node(self) -> str:
        """This node's name (``<ip>/<first 8 of the Ray node id>``)."""
        return node_identity()[1]

    async def run(self, config_json: str, secret: str) -> None:
        config = RunnerConfig.model_validate_json(config_json)
        setup_logging(config.log_level)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        await run_jobs(config, secret, self._stop, self._wake)

    async def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stop.set()
