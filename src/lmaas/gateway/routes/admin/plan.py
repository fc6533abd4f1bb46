"""Capacity planning: ``PUT/GET /admin/models/{name}/versions/{ref}/profile`` keep and show
what ``lmaas profile`` measured; ``GET /admin/plan`` plans replicas for a load from it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from lmaas.controller.planner import TARGET_UTILISATION, Load
from lmaas.gateway.deps import AdminKey, PlanManagementDep
from lmaas.protocol.plan import PlanOut, ProfileBody

router = APIRouter(tags=["admin: planning"])


@router.put("/admin/models/{name}/versions/{ref}/profile", response_model=ProfileBody)
async def set_profile(
    name: str, ref: str, body: ProfileBody, plans: PlanManagementDep, _: AdminKey
) -> ProfileBody:
    """Keep a measured profile with the version (``lmaas profile`` sends it)."""
    return await plans.set_profile(name, ref, body)


@router.get("/admin/models/{name}/versions/{ref}/profile", response_model=ProfileBody)
async def get_profile(name: str, ref: str, plans: PlanManagementDep, _: AdminKey) -> ProfileBody:
    return await plans.profile(name, ref)


@router.get("/admin/plan", response_model=PlanOut)
async def get_plan(
    plans: PlanManagementDep,
    _: AdminKey,
    model: Annotated[
        str, Query(min_length=1, max_length=300, description="Deployment or store ref")
    ],
    rps: Annotated[float, Query(gt=0, le=1e6, description="Requests per second")],
    prompt_tokens: Annotated[int, Query(ge=1, le=10_000_000)],
    output_tokens: Annotated[int, Query(ge=1, le=10_000_000)],
    ttft_p99: Annotated[float | None, Query(gt=0, le=86400, description="Seconds")] = None,
    latency_p99: Annotated[float | None, Query(gt=0, le=86400, description="Seconds")] = None,
    utilisation: Annotated[float, Query(gt=0, le=1)] = TARGET_UTILISATION,
    cores: Annotated[int | None, Query(ge=1, le=65536, description="Cores per machine")] = None,
    memory_gb: Annotated[float | None, Query(gt=0, le=1e6, description="GiB per machine")] = None,
) -> PlanOut:
    """How many replicas (and machines like this one, or like ``cores``/``memory_gb``) serve
    the load within its objectives, with the expected throughput, TTFT and utilisation."""
    load = Load(
        requests_per_s=rps,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        ttft_p99_s=ttft_p99,
        latency_p99_s=latency_p99,
        utilisation=utilisation,
    )
    memory = int(memory_gb * 2**30) if memory_gb is not None else None
    return await plans.plan(model, load, plans.machine(cores, memory))
