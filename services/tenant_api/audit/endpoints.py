"""/v1/audit-events: operators see every event, tenant admins and tenant keys their tenant's."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from tenant_api.audit.repository import AuditRepository
from tenant_api.audit.schemas import AuditEventOut, AuditEventPage
from tenant_api.deps import AuditRead, SessionDep

router = APIRouter(prefix="/v1/audit-events", tags=["audit"])


@router.get("", response_model=AuditEventPage, name="audit_events.list")
async def list_audit_events(
    session: SessionDep,
    principal: AuditRead,
    tenant_id: Annotated[uuid.UUID | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditEventPage:
    """Newest first."""
    events = await AuditRepository(session, principal).recent(tenant_id=tenant_id, limit=limit)
    return AuditEventPage(
        items=[AuditEventOut.model_validate(e, from_attributes=True) for e in events]
    )
