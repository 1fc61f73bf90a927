"""Response bodies of GET /v1/status and GET /v1/tenants/{id}/logs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class ComponentStatus(BaseModel):
    name: Literal["api", "database", "redis", "proxy", "workers", "homeservers"]
    up: bool
    detail: str = Field(description="What was checked and what it answered")


class HomeserverStatus(BaseModel):
    tenant_id: uuid.UUID
    slug: str
    up: bool
    detail: str


class StatusOut(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="ok: every component is up")
    checked_at: datetime
    version: str = Field(description="The C3 release answering")
    components: list[ComponentStatus]
    homeservers: list[HomeserverStatus] = Field(
        description="Each active tenant's homeserver, as a worker sees it (empty when no "
        "worker answered)"
    )


class LogsOut(BaseModel):
    tenant_id: uuid.UUID
    backend: str = Field(description="Where the homeserver runs: local or kubernetes")
    lines: list[str] = Field(
        description="The homeserver's last log lines, oldest first; access tokens and other "
        "credentials in them are replaced by <redacted>"
    )
