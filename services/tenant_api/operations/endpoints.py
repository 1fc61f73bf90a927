"""GET /v1/operations/{id}: the state of one asynchronous lifecycle request."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from platform_core.errors import NotFound
from tenant_api.deps import AuditDep, SessionDep, TenantsAdmin, TenantsRead
from tenant_api.operations import service
from tenant_api.operations.repository import OperationRepository
from tenant_api.operations.schemas import OperationOut

router = APIRouter(prefix="/v1/operations", tags=["operations"])


@router.get("/{operation_id}", response_model=OperationOut, name="operations.get")
async def get_operation(
    operation_id: uuid.UUID, session: SessionDep, principal: TenantsRead
) -> OperationOut:
    operation = await OperationRepository(session, principal).get(operation_id)
    if operation is None:
        raise NotFound(f"operation {operation_id} not found")
    return OperationOut.model_validate(operation)


@router.post("/{operation_id}/retry", response_model=OperationOut, name="operations.retry")
async def retry_operation(
    operation_id: uuid.UUID, session: SessionDep, principal: TenantsAdmin, audit: AuditDep
) -> OperationOut:
    """Run a failed operation again from where it stopped (its steps are idempotent), with a
    fresh attempt budget. Only failed operations can be retried."""
    operation = await OperationRepository(session, principal).get(operation_id)
    if operation is None:
        raise NotFound(f"operation {operation_id} not found")
    await service.retry(session, audit, operation)
    return OperationOut.model_validate(operation)
