"""Request and response bodies of /v1/tenants."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from platform_core.models import TenantStatus

DNS_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,61})[a-z0-9]$")
RESERVED_SLUGS = frozenset(
    {
        "admin",
        "api",
        "app",
        "apps",
        "auth",
        "billing",
        "c3",
        "cdn",
        "console",
        "dashboard",
        "docs",
        "ftp",
        "help",
        "identity",
        "internal",
        "localhost",
        "mail",
        "matrix",
        "media",
        "metrics",
        "ns1",
        "ns2",
        "operator",
        "portal",
        "proxy",
        "root",
        "smtp",
        "sso",
        "static",
        "status",
        "support",
        "synapse",
        "system",
        "turn",
        "www",
    }
)


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: str = Field(
        description="DNS label (3–63 chars: a-z, 0-9, '-'); the tenant's homeserver is "
        "<slug>.<base domain>. Cannot change later.",
        examples=["acme"],
    )
    display_name: str = Field(min_length=1, max_length=200, examples=["Acme Corp"])
    plan: str | None = Field(default=None, description="Plan code; the default plan if omitted")
    server_name: str | None = Field(
        default=None,
        max_length=253,
        description="A custom Matrix domain (e.g. acme.com) instead of <slug>.<base domain>. "
        "Immutable, as Synapse requires; each domain can be claimed once. Point its DNS at the "
        "proxy.",
        examples=["chat.acme.com"],
    )

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG_RE.fullmatch(value):
            raise ValueError(
                "must be a DNS label: 3-63 characters, lowercase letters, digits and '-', "
                "starting and ending with a letter or digit"
            )
        if "--" in value[2:4]:
            raise ValueError("must not have '--' in positions 3-4 (reserved for IDNA)")
        if value in RESERVED_SLUGS:
            raise ValueError(f"'{value}' is reserved")
        return value

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        labels = value.split(".")
        if len(labels) < 2 or not all(DNS_LABEL_RE.fullmatch(label) for label in labels):
            raise ValueError("must be a DNS name such as chat.acme.com (no port, no trailing dot)")
        if labels[-1].isdigit():
            raise ValueError("must be a DNS name, not an IP address")
        return value

    @field_validator("display_name")
    @classmethod
    def _display_name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        if any(ord(ch) < 32 for ch in value):
            raise ValueError("must not contain control characters")
        return value


class TenantPatch(BaseModel):
    """Fields to change. A plan change is billed from the start of today (UTC), prorated by
    day; its limits reach the homeserver's config with the lifecycle work (issue 5)."""

    model_config = ConfigDict(extra="forbid")
    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    plan: str | None = Field(default=None, description="Code of the plan to move to")

    _display_name = field_validator("display_name")(
        lambda cls, v: v if v is None else TenantCreate._display_name(v)
    )


class OperationRef(BaseModel):
    id: uuid.UUID
    url: str


class TenantOut(BaseModel):
    id: uuid.UUID
    slug: str
    display_name: str
    server_name: str
    status: TenantStatus
    plan: str
    homeserver_url: str = Field(description="Base URL Matrix clients use (through the proxy)")
    homeserver_path_url: str = Field(description="Same homeserver under the proxy's /t/<slug>")
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


class TenantAccepted(TenantOut):
    operation: OperationRef


class TenantPage(BaseModel):
    items: list[TenantOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end"
    )
