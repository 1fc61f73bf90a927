"""The one audit writer: every audit event — the API's, the reconciler's, the admin token's
renewal — is built and added here, in the caller's transaction (it commits with the change it
describes, or not at all)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from platform_core.models import AuditEvent


def add_event(
    session: Session | AsyncSession,
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: object,
    request_id: str,
    tenant_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one event to ``session``. ``actor`` is ``<kind>:<subject>`` (``operator:<id>``,
    ``system:reconcile``, ``address:<ip>``…); ``request_id`` ties the events of one request or
    one reconcile pass together."""
    event = AuditEvent(
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        tenant_id=tenant_id,
        request_id=request_id,
        details=details or {},
    )
    session.add(event)
    return event
