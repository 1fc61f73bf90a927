"""Small factories for database rows used by tests."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from platform_core.db import task_session
from platform_core.models import (
    Context,
    ContextParticipant,
    ContextState,
    ParticipantKind,
    ParticipantState,
    Plan,
    Tenant,
    TenantStatus,
)


def make_tenant(status: TenantStatus = TenantStatus.ACTIVE) -> uuid.UUID:
    slug = f"t{uuid.uuid4().hex[:12]}"
    with task_session() as session:
        plan = session.scalars(select(Plan).where(Plan.is_default.is_(True))).one()
        tenant = Tenant(
            slug=slug,
            display_name=slug,
            server_name=f"{slug}.c3.test",
            status=status,
            plan_id=plan.id,
        )
        session.add(tenant)
        session.flush()
        return tenant.id


def add_open_context(
    session: Session,
    tenant_id: uuid.UUID,
    server_name: str,
    *,
    title: str = "Case",
    expires_at: datetime | None = None,
) -> tuple[Context, ContextParticipant]:
    """Context ``case-1`` of the tenant, open, with one active external participant (flushed)."""
    context = Context(
        tenant_id=tenant_id,
        ref="case-1",
        title=title,
        room_id=f"!{uuid.uuid4().hex}:{server_name}",
        status=ContextState.OPEN,
    )
    session.add(context)
    session.flush()
    participant = ContextParticipant(
        context_id=context.id,
        tenant_id=tenant_id,
        kind=ParticipantKind.EXTERNAL,
        user_id=f"@c3x-{uuid.uuid4().hex[:8]}:{server_name}",
        status=ParticipantState.ACTIVE,
        expires_at=expires_at,
    )
    session.add(participant)
    session.flush()
    return context, participant
