"""The model store over the admin API (``/admin/models``): request bodies and responses."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

MAX_DESCRIPTION = 4096
# Versions count up from 1. A longer reference is read as an alias (store/catalog.py), and a
# number this size fits every database's integer column (PostgreSQL's holds < 2**31).
MAX_VERSION_NUMBER = 999_999_999


class CreateModelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: Annotated[str, Field(max_length=MAX_DESCRIPTION)] = ""


class ImportBody(BaseModel):
    """Import from the server's own disk (`path`) or from an installed model package."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = None
    package: str | None = None
    description: Annotated[str, Field(max_length=MAX_DESCRIPTION)] = ""


class AliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Strict: a JSON true is no version 1 (nor is 1.0).
    version: Annotated[StrictInt, Field(le=MAX_VERSION_NUMBER)] | StrictStr


class VersionEvaluation(BaseModel):
    run_id: str
    eval_id: str
    eval_name: str
    created_at: datetime
    result_counts: dict[str, int]
    per_testing_criteria_results: list[dict[str, Any]]


class VersionOut(BaseModel):
    object: Literal["model.version"] = "model.version"
    model: str
    number: int
    format: str
    architecture: str | None
    parameter_count: int | None
    context_length: int | None
    quantization: str | None
    size_bytes: int
    digest: str
    source: str
    description: str
    created_at: datetime
    state: str  # ready, pending, or broken (its blobs were found missing or damaged)
    aliases: list[str]
    error: str | None = None  # why a broken version is broken
    # For the resource pool: a loaded replica's own memory without its KV cache, as measured
    # (null before one loaded), and the KV cache's bytes per context token (null: unknown).
    memory_bytes: int | None = None
    kv_bytes_per_token: int | None = None
    # Finished eval runs that evaluated this version (shown by GET .../versions/{ref} only).
    evaluations: list[VersionEvaluation] | None = None


class ModelOut(BaseModel):
    object: Literal["model.entry"] = "model.entry"
    name: str
    description: str
    created_at: datetime
    latest: int | None
    aliases: dict[str, int]
    versions: list[VersionOut] | None = None


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
