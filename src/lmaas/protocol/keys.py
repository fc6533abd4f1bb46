"""API keys over the admin API (``/admin/keys``): request bodies and responses. A key's secret
is in the answer to its creation only; nothing else ever shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: Literal["admin", "inference"] = "inference"
    name: Annotated[str, Field(max_length=200)] = ""
    models: list[str] | None = Field(
        default=None, description="Served names the key may use; leave out for every model"
    )
    rpm: Annotated[int | None, Field(ge=1, description="Requests per minute")] = None
    tpm: Annotated[int | None, Field(ge=1, description="Tokens per minute")] = None


class KeyOut(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    scope: str
    models: list[str] | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    rpm: int | None
    tpm: int | None


class KeyCreated(KeyOut):
    key: str = Field(description="The secret: shown this once, never stored")


class KeyListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyOut]
