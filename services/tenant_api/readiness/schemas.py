"""Response body of GET /v1/tenants/{id}/readiness."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class ReadinessCheckOut(BaseModel):
    name: str = Field(
        description="sliding_sync, password_login, well_known, turn or federation (stable ids)"
    )
    title: str = Field(description="A label for people")
    ok: bool | None = Field(
        description="true passed, false failed, null skipped (nothing to check)"
    )
    detail: str = Field(description="What the check saw")
    fix: str = Field(description="One line: what to do about a failed check (empty otherwise)")


class ReadinessOut(BaseModel):
    tenant_id: uuid.UUID
    homeserver_url: str = Field(description="The public base URL the checks used, via the proxy")
    checked_at: datetime
    ready: bool = Field(description="No check failed (skipped ones do not count)")
    checks: list[ReadinessCheckOut]
