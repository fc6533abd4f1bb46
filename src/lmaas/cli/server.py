"""The uvicorn server `lmaas serve` runs: uvicorn's, plus the app's graceful drain."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from lmaas.gateway.shutdown import Drain


class DrainingServer(uvicorn.Server):
    """Tells the app's :class:`Drain` when shutdown starts (uvicorn has then closed its
    listener and waits for running requests, which the drain ends in time), and
    ``on_listening`` the port it bound to when it was asked for any free one (port 0).

    A shutdown on SIGTERM or SIGINT that completed ends the process with status 0: uvicorn
    would re-raise the signal after restoring the default handler, killing the process with
    it, which a supervisor reads as a crash.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        drain: Drain,
        *,
        on_listening: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_listening is not None and self.config.port == 0:
            # Bound to any free port: say which one (the job runner calls it).
            for server in self.servers:
                for sock in server.sockets:
                    self.on_listening(sock.getsockname()[1])
                    return

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain.begin()
        await super().shutdown(sockets)
        self._captured_signals.clear()
