"""Small helpers about Ray nodes, shared by the cluster's replica actors and the job runner
actors (so that neither package imports the other)."""

from __future__ import annotations

import socket


def node_identity() -> tuple[str, str]:
    """This node's address and a name for it (``10.0.0.5/1a2b3c4d``: its address and the start
    of its Ray node id, as several Ray nodes may share an address)."""
    try:
        import ray
    except ImportError:
        ray = None
    if ray is None or not ray.is_initialized():  # outside a Ray worker (tests)
        return "127.0.0.1", socket.gethostname()
    ip = str(ray.util.get_node_ip_address())
    return ip, f"{ip}/{ray.get_runtime_context().get_node_id()[:8]}"


def ray_error_text(exc: BaseException) -> str:
    """A short sentence for a Ray error (a task error's cause rather than its traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0][:300] if first else ''}"
