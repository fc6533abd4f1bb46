"""The uvicorn server `lmaas serve` runs: uvicorn's, plus the app's graceful drain."""

from __future__ import annotations

import socket

import uvicorn

from lmaas.gateway.shutdown import Drain


class DrainingServer(uvicorn.Server):
    """Tells the app's :class:`Drain` when shutdown starts (uvicorn has then closed its
    listener and waits for running requests, which the drain ends in time).

    A shutdown on SIGTERM or SIGINT that completed ends the process with status 0: uvicorn
    would re-raise the signal after restoring the default handler, killing the process with
    it, which a supervisor reads as a crash.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain.begin()
        await super().shutdown(sockets)
        self._captured_signals.clear()
