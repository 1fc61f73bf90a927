"""Recording audit events, in the same transaction as the write they describe (a write that
rolls back leaves no event; a committed write always has one)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import Principal
from platform_core.models import AuditEvent


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "-")


def record(
    session: AsyncSession,
    request: Request,
    principal: Principal,
    action: str,
    target_type: str,
    target_id: object,
    *,
    tenant_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    record_as(
        session,
        request,
        principal.actor,
        action,
        target_type,
        target_id,
        tenant_id=tenant_id,
        details=details,
    )


def record_as(
    session: AsyncSession,
    request: Request,
    actor: str,
    action: str,
    target_type: str,
    target_id: object,
    *,
    tenant_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """An event whose actor is no principal (e.g. ``address:<ip>`` for anonymous sign-ins)."""
    session.add(
        AuditEvent(
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            tenant_id=tenant_id,
            request_id=request_id(request),
            details=details or {},
        )
    )
