"""The live map of served names to engines that the gateway routes by."""

from __future__ import annotations

from collections.abc import Callable

from lmaas.engine.client import EngineClient


class EngineDirectory(dict[str, EngineClient]):
    """Deployment name → engine. A deployment manager adds and removes entries while the
    server runs; ``resolver`` maps other spellings of a model (``name:alias``, ``name:3``, a
    store model served under another deployment name) to a deployment name, and
    ``version_of`` tells which store version a deployment serves now."""

    def __init__(
        self,
        engines: dict[str, EngineClient] | None = None,
        *,
        resolver: Callable[[str], str | None] | None = None,
        version_of: Callable[[str], int | None] | None = None,
    ) -> None:
        super().__init__(engines or {})
        self._resolver = resolver
        self._version_of = version_of

    def lookup(self, model: str) -> EngineClient | None:
        engine = self.get(model)
        if engine is None and self._resolver is not None:
            name = self._resolver(model)
            if name is not None:
                engine = self.get(name)
        return engine

    def version_of(self, name: str) -> int | None:
        return self._version_of(name) if self._version_of is not None else None
