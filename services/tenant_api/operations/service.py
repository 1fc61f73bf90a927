"""Operation rules: what follows an operator's retry of a failed operation. Never commits — the
request boundary does."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from platform_core import lifecycle
from platform_core.celery import TASK_FOR_OPERATION_KIND
from platform_core.errors import Conflict
from platform_core.models import Operation, OperationState
from tenant_api.kit import tasks
from tenant_api.kit.audit import AuditContext


async def retry(session: AsyncSession, audit: AuditContext, operation: Operation) -> None:
    """Run a failed operation again (pending, fresh attempt budget): audit who asked for it and
    send its task after commit. Anything but a failed operation → 409."""
    if operation.state is not OperationState.FAILED:
        raise Conflict(
            f"only a failed operation can be retried (this one is {operation.state.value})"
        )
    lifecycle.retry_requested(operation)
    audit.record(
        "operation.retry",
        "operation",
        operation.id,
        tenant_id=operation.tenant_id,
        details={"kind": operation.kind.value, "last_error": operation.last_error},
    )
    await session.flush()
    await session.refresh(operation)
    tasks.enqueue(session, TASK_FOR_OPERATION_KIND[operation.kind.value], operation.id)
