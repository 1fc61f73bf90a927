"""Who acts in this request, for the audit log: services record the events of the state they
change, in the request's transaction (a write that rolls back leaves no event; a committed
write always has one)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.audit import add_event


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "-")


@dataclass(frozen=True)
class AuditContext:
    """The request's session, its actor (``<kind>:<subject>``, e.g. ``operator:<id>`` or
    ``address:<ip>`` for anonymous sign-ins) and its request id."""

    session: AsyncSession
    actor: str
    request_id: str

    def record(
        self,
        action: str,
        target_type: str,
        target_id: object,
        *,
        tenant_id: uuid.UUID | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        add_event(
            self.session,
            actor=self.actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            request_id=self.request_id,
            tenant_id=tenant_id,
            details=details,
        )
