"""The node's end of a Ray replica: the actor that fetches the model and runs its worker there.

One ``ReplicaHost`` actor per replica run (the gateway makes it with the replica's CPU and
memory as Ray resources, and Ray picks the node). It

1. fetches the model's blobs from the gateway into the node's cache, each checked against its
   sha256 digest (:mod:`lmaas.store.node_cache`), pins them there so that pruning the cache
   leaves them until the worker exits, and listens on a TCP port of the node (``prepare``,
   which returns the address);
2. accepts the gateway's connection, which must open with the run's secret (32 random bytes the
   gateway sent through Ray; any other connection is dropped), and starts the same worker a
   local replica runs (``python -m lmaas.worker --fd N``) on that connection, so the gateway
   speaks the same framed protocol to it as to a local worker (``serve``, which returns the
   worker's exit code when it ends).

The worker dies with the actor (it asks Linux for SIGTERM when its parent goes), so killing
the actor, or losing its node, ends the run; the gateway sees the connection close or the
``serve`` call fail. This module does not import Ray (the actor class is made with
``ray.remote`` by :mod:`lmaas.controller.cluster.ray`), so it is tested without a cluster.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmaas.raynodes import node_identity
from lmaas.store.folder import FolderFile
from lmaas.store.node_cache import NodeCache, Source
from lmaas.store.node_prune import Lease

log = logging.getLogger(__name__)

SECRET_BYTES = 32
# How long a connection may take to present the secret before it is dropped.
_HELLO_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class HostSpec:
    """What the actor needs to run one replica's worker (sent through Ray; plain data)."""

    name: str
    engine_json: str
    format: Literal["gguf", "hf"] | None
    digest: str
    files: tuple[FolderFile, ...]
    gateway_url: str
    token: str
    cache_dir: str
    cache_max_bytes: int = 0  # the node cache's bound (0: none)
    accept_timeout: float = 120.0
    # The worker's command line before its arguments; empty: this node's Python running
    # ``lmaas.worker`` (tests put a stand-in here).
    worker_command: tuple[str, ...] = ()


class ReplicaHost:
    """A replica's actor on a cluster node (see the module doc)."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._listener: socket.socket | None = None
        # The model's blobs, pinned in the node cache while this actor lives (or until
        # ``serve`` ends): the cache never prunes them under the worker.
        self._lease: Lease | None = None

    def fetch(self) -> Path:
        """The model's file or folder on this node (fetched and verified when not cached),
        pinned there until ``serve`` ends."""
        spec = self.spec
        cache = NodeCache(Path(spec.cache_dir).expanduser(), spec.cache_max_bytes)
        if self._lease is None:
            self._lease = cache.lease()
        source = Source(spec.gateway_url, spec.token)
        self.path = cache.model_path(
            source, spec.format, spec.digest, spec.files, lease=self._lease
        )
        return self.path

    def listen(self, ip: str) -> int:
        """Listen for the gateway on ``ip`` (a free port); returns the port."""
        listener = socket.create_server((ip, 0))
        self._listener = listener
        return int(listener.getsockname()[1])

    def prepare(self) -> dict[str, Any]:
        """Fetch the model and listen: where the gateway connects, and the node's name."""
        self.fetch()
        ip, node = node_identity()
        port = self.listen(ip)
        return {"ip": ip, "port": port, "node": node}

    def serve(self, secret: bytes) -> int:
        """Run the worker on the gateway's connection until it exits; its exit code. The
        model's pins in the node cache end with it."""
        try:
            return self._serve(secret)
        finally:
            lease, self._lease = self._lease, None  # a later fetch pins again, anew
            if lease is not None:
                lease.release()

    def _serve(self, secret: bytes) -> int:
        conn = self._accept(secret)
        assert self.path is not None, "prepare() first"
        spec = self.spec
        command = spec.worker_command or (sys.executable, "-m", "lmaas.worker")
        try:
            self.proc = subprocess.Popen(
                [
                    *command,
                    "--fd",
                    str(conn.fileno()),
                    "--name",
                    spec.name,
                    "--model-path",
                    str(self.path),
                    "--engine-json",
                    spec.engine_json,
                ],
                pass_fds=(conn.fileno(),),
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            conn.close()  # the worker holds its own copy
        return self.proc.wait()

    def _accept(self, secret: bytes) -> socket.socket:
        """The first connection that presents ``secret``; others are dropped."""
        listener = self._listener
        if listener is None:
            raise RuntimeError("prepare() first")
        deadline = time.monotonic() + self.spec.accept_timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the gateway did not connect")
                listener.settimeout(left)
                conn, peer = listener.accept()
                if _presents(conn, secret, min(_HELLO_TIMEOUT, left)):
                    conn.settimeout(None)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return conn
                log.warning("dropped a connection from %s without the replica's secret", peer)
                conn.close()
        finally:
            listener.close()
            self._listener = None


def _presents(conn: socket.socket, secret: bytes, timeout: float) -> bool:
    """Whether ``conn`` sends ``secret`` within ``timeout`` seconds in all (a peer trickling
    one byte at a time cannot hold the accept loop longer)."""
    deadline = time.monotonic() + timeout
    got = b""
    try:
        while len(got) < SECRET_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            conn.settimeout(left)
            chunk = conn.recv(SECRET_BYTES - len(got))
            if not chunk:
                return False
            got += chunk
    except OSError:
        return False
    return hmac.compare_digest(got, secret)
