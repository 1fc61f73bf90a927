"""All SQL on the audit log for the API."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from platform_core.models import AuditEvent
from tenant_api.kit.repository import Repository


class AuditRepository(Repository):
    async def recent(self, *, tenant_id: uuid.UUID | None, limit: int) -> list[AuditEvent]:
        statement = select(AuditEvent).order_by(AuditEvent.occurred_at.desc()).limit(limit)
        if tenant_id is not None:
            statement = statement.where(AuditEvent.tenant_id == tenant_id)
        statement = self.scoped(statement, AuditEvent.tenant_id)
        return list((await self.session.scalars(statement)).all())
