"""Operation rules: what follows an operator's retry of a failed operation. Never commits — the
request boundary does."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.celery import TASK_FOR_OPERATION_KIND
from platform_core.models import Operation
from tenant_api.kit import tasks
from tenant_api.kit.audit import AuditContext


async def accept_retry(session: AsyncSession, audit: AuditContext, operation: Operation) -> None:
    """The operation was moved back to pending for another run: audit who asked for it and
    send its task after commit."""
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
