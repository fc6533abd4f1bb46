"""POST /admin/models/{name}/versions/{ref}/quantize (admin key): a quantization job."""

from __future__ import annotations

from fastapi import APIRouter, status

from lmaas.gateway.deps import AdminKey, QuantizeManagementDep
from lmaas.protocol.jobs import JobObject
from lmaas.protocol.quantize import QuantizeBody

router = APIRouter(prefix="/admin/models", tags=["admin: models"])


@router.post(
    "/{name}/versions/{ref}/quantize",
    response_model=JobObject,
    status_code=status.HTTP_202_ACCEPTED,
)
async def quantize_version(
    name: str, ref: str, body: QuantizeBody, quantize: QuantizeManagementDep, key: AdminKey
) -> JobObject:
    """Quantize a GGUF version to each of ``types`` (new versions of the same model, aliased
    by type) and measure each beside the source: held-out perplexity, tokens/s and size."""
    return await quantize.create(key, name, ref, body)
