"""GET /v1/operations/{id}: the state of one asynchronous lifecycle request."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from platform_core.errors import NotFound
from tenant_api.deps import SessionDep, TenantsRead
from tenant_api.operations.repository import OperationRepository
from tenant_api.operations.schemas import OperationOut

router = APIRouter(prefix="/v1/operations", tags=["operations"])


@router.get("/{operation_id}", response_model=OperationOut)
async def get_operation(
    operation_id: uuid.UUID, session: SessionDep, principal: TenantsRead
) -> OperationOut:
    operation = await OperationRepository(session, principal).get(operation_id)
    if operation is None:
        raise NotFound(f"operation {operation_id} not found")
    return OperationOut.model_validate(operation)
