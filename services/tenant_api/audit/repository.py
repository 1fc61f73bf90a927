"""All SQL on the audit log for the API."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import Principal
from platform_core.models import AuditEvent
from tenant_api.kit.scoping import scoped


async def recent(
    session: AsyncSession, principal: Principal, *, tenant_id: uuid.UUID | None, limit: int
) -> list[AuditEvent]:
    statement = select(AuditEvent).order_by(AuditEvent.occurred_at.desc()).limit(limit)
    if tenant_id is not None:
        statement = statement.where(AuditEvent.tenant_id == tenant_id)
    statement = scoped(statement, principal, AuditEvent.tenant_id)
    return list((await session.scalars(statement)).all())
