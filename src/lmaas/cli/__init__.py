"""The `lmaas` command line (``lmaas.cli:main``).

- ``app``: the Typer app and the command groups it mounts.
- ``serve``: `lmaas serve`, the server in this process.
- ``models``, ``requests``, ``deploy``, ``classifiers``, ``jobs``: a running server's admin
  API, through the one client in ``http``.
- ``keys``: API keys, straight in the catalog database (works without a server).
"""

from __future__ import annotations

from lmaas.cli.app import main

__all__ = ["main"]
