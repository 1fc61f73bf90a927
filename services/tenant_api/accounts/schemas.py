"""Request and response bodies of /v1/accounts."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from platform_core.models import AccountRole

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s.]{2,63}$")


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254)
    password: str = Field(min_length=12, max_length=1024, description="At least 12 characters")
    role: AccountRole
    tenant_id: uuid.UUID | None = Field(
        default=None, description="Required for tenant_admin, refused for operator"
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = value.strip().lower()
        if not EMAIL_RE.match(value):
            raise ValueError("not an email address")
        return value

    @model_validator(mode="after")
    def _tenant_binding(self) -> AccountCreate:
        if self.role is AccountRole.TENANT_ADMIN and self.tenant_id is None:
            raise ValueError("tenant_id: a tenant admin belongs to one tenant")
        if self.role is AccountRole.OPERATOR and self.tenant_id is not None:
            raise ValueError("tenant_id: operators are not bound to a tenant")
        return self


class AccountOut(BaseModel):
    id: uuid.UUID
    email: str
    role: str
    tenant_id: uuid.UUID | None
    created_at: datetime
    disabled_at: datetime | None = Field(
        default=None, description="Set while the account is disabled (it cannot sign in)"
    )


class PasswordReset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(
        min_length=12,
        max_length=1024,
        description="The new password (at least 12 characters). Every session of the account "
        "ends: refresh tokens are revoked and access tokens stop working at once.",
    )
