"""Response bodies of /v1/audit-events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel


class AuditEventOut(BaseModel):
    id: uuid.UUID
    occurred_at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str
    tenant_id: uuid.UUID | None
    request_id: str
    details: dict[str, Any]


class AuditEventPage(BaseModel):
    items: list[AuditEventOut]
