"""/admin/deployments: what is served, with how many replicas, and how each replica is doing."""

from __future__ import annotations

from fastapi import APIRouter, status
from starlette.responses import Response

from lmaas.gateway.deps import AdminKey, DeploymentsDep
from lmaas.protocol.deploy import (
    DeploymentCreate,
    DeploymentListOut,
    DeploymentOut,
    DeploymentPatch,
)

router = APIRouter(prefix="/admin/deployments", tags=["admin: deployments"])


@router.get("", response_model=DeploymentListOut)
async def list_deployments(control: DeploymentsDep, _: AdminKey) -> DeploymentListOut:
    return DeploymentListOut(data=control.list(), pool=control.pool_usage())


@router.post("", response_model=DeploymentOut, status_code=status.HTTP_201_CREATED)
async def create_deployment(
    body: DeploymentCreate, control: DeploymentsDep, _: AdminKey
) -> DeploymentOut:
    """Serve a model of the store; `wait` answers once the replicas are ready."""
    return await control.create(body)


@router.get("/{name:path}", response_model=DeploymentOut)
async def get_deployment(name: str, control: DeploymentsDep, _: AdminKey) -> DeploymentOut:
    return control.get(name)


@router.patch("/{name:path}", response_model=DeploymentOut)
async def update_deployment(
    name: str, body: DeploymentPatch, control: DeploymentsDep, _: AdminKey
) -> DeploymentOut:
    """Scale (`replicas`) or move to another version or alias (`model`, a rolling update)."""
    return await control.update(name, body)


@router.delete("/{name:path}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_deployment(name: str, control: DeploymentsDep, _: AdminKey) -> Response:
    """Stop serving: new requests get 404 at once, in-flight ones finish first."""
    await control.delete(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
