"""Request and response bodies of /v1/api-keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from platform_core.auth import Scope


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1, max_length=len(Scope))
    tenant_id: uuid.UUID | None = Field(
        default=None,
        description="Bind to one tenant; omitted = the operator organisation (operators only). "
        "Tenant admins always get keys of their own tenant.",
    )


class ApiKeyOut(BaseModel):
    id: str = Field(description="The key id (public part of the key)")
    name: str
    scopes: list[str]
    tenant_id: uuid.UUID | None
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret key. Shown once: C3 keeps only a hash.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]
