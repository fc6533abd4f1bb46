"""/admin/keys: API keys (the secret of a new key is in its creation's answer only)."""

from __future__ import annotations

from fastapi import APIRouter, status

from lmaas.gateway.deps import AdminKey, KeyManagementDep
from lmaas.protocol.keys import KeyCreate, KeyCreated, KeyListOut, KeyOut

router = APIRouter(prefix="/admin/keys", tags=["admin: keys"])


@router.get("", response_model=KeyListOut)
async def list_keys(keys: KeyManagementDep, _: AdminKey) -> KeyListOut:
    """Every key, revoked ones included, newest first; never a secret."""
    return await keys.list()


@router.post("", response_model=KeyCreated, status_code=status.HTTP_201_CREATED)
async def create_key(body: KeyCreate, keys: KeyManagementDep, _: AdminKey) -> KeyCreated:
    """A new key; `key` is its secret, shown this once."""
    return await keys.create(body)


@router.post("/{key_id}/revoke", response_model=KeyOut)
async def revoke_key(key_id: str, keys: KeyManagementDep, _: AdminKey) -> KeyOut:
    """Revoked for good: this gateway refuses it at once, others within the key cache TTL."""
    return await keys.revoke(key_id)
