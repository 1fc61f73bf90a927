"""GET /v1/operations/{id}: the state of one asynchronous lifecycle request."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request

from platform_core import lifecycle
from platform_core.celery import TASK_FOR_OPERATION_KIND
from platform_core.errors import Conflict, NotFound
from platform_core.models import OperationState
from tenant_api.audit.service import record
from tenant_api.deps import SessionDep, TenantsAdmin, TenantsRead
from tenant_api.kit import tasks
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


@router.post("/{operation_id}/retry", response_model=OperationOut)
async def retry_operation(
    operation_id: uuid.UUID, request: Request, session: SessionDep, principal: TenantsAdmin
) -> OperationOut:
    """Run a failed operation again from where it stopped (its steps are idempotent), with a
    fresh attempt budget. Only failed operations can be retried."""
    operation = await OperationRepository(session, principal).get(operation_id)
    if operation is None:
        raise NotFound(f"operation {operation_id} not found")
    if operation.state is not OperationState.FAILED:
        raise Conflict(
            f"only a failed operation can be retried (this one is {operation.state.value})"
        )
    lifecycle.retry_requested(operation)
    record(
        session,
        request,
        principal,
        "operation.retry",
        "operation",
        operation.id,
        tenant_id=operation.tenant_id,
        details={"kind": operation.kind.value, "last_error": operation.last_error},
    )
    await session.flush()
    await session.refresh(operation)
    tasks.enqueue(session, TASK_FOR_OPERATION_KIND[operation.kind.value], operation.id)
    return OperationOut.model_validate(operation)
