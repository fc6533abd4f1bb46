"""API keys over the admin API (``/admin/keys``): list, create (the secret shown once), revoke.

The same :class:`~lmaas.keys.KeyStore` the authenticator checks keys against, so a revoke
takes effect in this gateway at once (other gateways within the key cache TTL).
"""

from __future__ import annotations

import asyncio

from lmaas.keys import KeyInfo, KeyStore
from lmaas.protocol.keys import KeyCreate, KeyCreated, KeyListOut, KeyOut


def key_out(info: KeyInfo) -> KeyOut:
    return KeyOut(
        id=info.id,
        name=info.name,
        scope=info.scope,
        models=list(info.models) if info.models is not None else None,
        created_at=info.created_at,
        last_used_at=info.last_used_at,
        revoked_at=info.revoked_at,
        rpm=info.rpm,
        tpm=info.tpm,
    )


class KeyManagement:
    """Kept on ``app.state.key_management``."""

    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys

    async def list(self) -> KeyListOut:
        """Every key, revoked ones included, newest first."""
        infos = await asyncio.to_thread(self._keys.list)
        return KeyListOut(data=[key_out(info) for info in reversed(infos)])

    async def create(self, body: KeyCreate) -> KeyCreated:
        plaintext, info = await asyncio.to_thread(
            self._keys.create, body.scope, body.name, body.models, rpm=body.rpm, tpm=body.tpm
        )
        return KeyCreated(**key_out(info).model_dump(exclude={"object"}), key=plaintext)

    async def revoke(self, key_id: str) -> KeyOut:
        return key_out(await asyncio.to_thread(self._keys.revoke, key_id))
