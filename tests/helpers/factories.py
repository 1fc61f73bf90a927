"""Small factories for database rows used by tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from platform_core.crypto import SecretBox
from platform_core.db import task_session
from platform_core.models import (
    Context,
    ContextParticipant,
    ContextState,
    Homeserver,
    HomeserverDesiredState,
    ParticipantKind,
    ParticipantState,
    Plan,
    Tenant,
    TenantStatus,
)
from platform_core.settings import get_settings


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


@dataclass(frozen=True)
class TenantWithContext:
    tenant_id: uuid.UUID
    context_id: uuid.UUID
    room_id: str
    external_user_id: str


def make_tenant_with_context(hs_token: str) -> TenantWithContext:
    """A tenant whose homeserver runs the application service (pushing with ``hs_token``),
    with its open context ``case-1`` and that context's one external participant."""
    tenant_id = make_tenant()
    box = SecretBox(get_settings().require_secret_key())
    with task_session() as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        session.add(
            Homeserver(
                tenant_id=tenant_id,
                backend="local",
                desired_state=HomeserverDesiredState.RUNNING,
                secrets_encrypted=box.encrypt_json(
                    {"appservice_as_token": "as", "appservice_hs_token": hs_token}
                ),
            )
        )
        context, external = add_open_context(session, tenant_id, tenant.server_name)
        return TenantWithContext(tenant_id, context.id, context.room_id, external.user_id)
