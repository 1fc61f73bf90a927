"""Request and response bodies of /v1/tenants."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from platform_core.homeserver_settings import FederationMode, RegistrationPolicy
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


def _dns_name(value: str) -> str:
    value = value.strip().lower()
    labels = value.split(".")
    if len(value) > 253 or len(labels) < 2:
        raise ValueError(f"'{value}' is not a DNS name such as matrix.example.com")
    if not all(DNS_LABEL_RE.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise ValueError(f"'{value}' is not a DNS name such as matrix.example.com")
    return value


class FederationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: FederationMode = Field(
        description="off: no other Matrix server can reach this one or be reached from it; "
        "allowlist: only `allowed_servers`; open: any Matrix server"
    )
    allowed_servers: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Server names (DNS names) federated with in mode allowlist",
        examples=[["partner.example.com"]],
    )

    @field_validator("allowed_servers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        return sorted({_dns_name(name) for name in value})

    @model_validator(mode="after")
    def _servers_fit_mode(self) -> FederationIn:
        if self.mode is FederationMode.ALLOWLIST and not self.allowed_servers:
            raise ValueError("allowed_servers: mode allowlist needs at least one server name")
        if self.mode is not FederationMode.ALLOWLIST and self.allowed_servers:
            raise ValueError("allowed_servers: only meaningful with mode allowlist")
        return self


class RetentionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_lifetime_days: int = Field(
        ge=1,
        le=36500,
        description="Messages older than this are no longer served and are purged (state "
        "events such as room names and memberships are kept). Rooms may set a shorter "
        "lifetime, never a longer one.",
    )


# RFC 7065: turn[s]:host[:port][?transport=udp|tcp], host a DNS name, IPv4 or [IPv6].
TURN_URI_RE = re.compile(
    r"^turns?:(?:[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]{2,45}\])"
    r"(?::\d{1,5})?(?:\?transport=(?:udp|tcp))?$",
    re.IGNORECASE,
)
# RFC 6749 scope-token: printable ASCII except space, '"' and '\'.
SCOPE_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,100}$")


class TurnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uris: list[str] = Field(
        min_length=1,
        max_length=10,
        description="TURN server URIs clients are given, e.g. turns:turn.example.com:443"
        "?transport=tcp",
    )
    shared_secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=512,
        repr=False,
        description="The TURN server's static-auth-secret (coturn `use-auth-secret`), from "
        "which time-limited credentials are derived. Write-only; required the first time, "
        "kept when omitted later.",
    )
    user_lifetime_s: int = Field(
        default=3600, ge=60, le=7 * 86400, description="How long TURN credentials last"
    )

    @field_validator("uris")
    @classmethod
    def _uris(cls, value: list[str]) -> list[str]:
        for uri in value:
            if not TURN_URI_RE.fullmatch(uri):
                raise ValueError(
                    f"'{uri[:80]}' is not a TURN URI such as turn:turn.example.com:3478"
                    "?transport=udp or turns:turn.example.com:443?transport=tcp"
                )
        return value


class OidcIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(
        max_length=500,
        description="The identity provider's issuer URL (https); its "
        "/.well-known/openid-configuration is discovered by the homeserver",
        examples=["https://login.acme.com/realms/staff"],
    )
    client_id: str = Field(min_length=1, max_length=255)
    client_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        repr=False,
        description="Write-only; required the first time, kept when omitted later",
    )
    display_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="The sign-in button's label in clients (default: SSO)",
    )
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile"],
        max_length=20,
        description="Requested scopes; `openid` is always included. The user's Matrix name "
        "comes from the `preferred_username` claim, else from `sub`.",
    )

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https URL, e.g. https://login.acme.com/realms/staff")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry a query, fragment or credentials")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        for scope in value:
            if not SCOPE_RE.fullmatch(scope):
                raise ValueError(f"'{scope[:100]}' is not an OAuth scope")
        return ["openid", *sorted(set(value) - {"openid"})]

    _display_name = field_validator("display_name")(
        lambda cls, v: v if v is None else TenantCreate._display_name(v)
    )


class TenantPatch(BaseModel):
    """Fields to change; omitted fields stay as they are. A plan change is billed from the
    start of today (UTC), prorated by day. Homeserver settings (all but display_name) become
    the homeserver's config through a reconfigure operation (its URL in `Location`); the
    homeserver restarts and clients ride it out by retrying. For the settings, `null` means
    back to the default (federation off, registration closed, no retention, the plan's upload
    limit, no TURN, no SSO)."""

    model_config = ConfigDict(extra="forbid")
    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    plan: str | None = Field(
        default=None, description="Code of the plan to move to (operators only)"
    )
    federation: FederationIn | None = None
    registration: RegistrationPolicy | None = Field(
        default=None,
        description="closed: only the API creates accounts; token: anyone holding a "
        "registration token (see /registration-tokens) may sign up; open: anyone may sign "
        "up with no verification at all — an open door for spam and abuse, use only on "
        "networks you control. Tenant admins may choose open only on a plan that allows it "
        "(`allow_open_registration`; 403 otherwise), operators always may.",
    )
    message_retention: RetentionIn | None = Field(
        default=None, description="null: messages are kept forever"
    )
    max_upload_size_bytes: int | None = Field(
        default=None,
        ge=1024 * 1024,  # smaller caps would refuse ordinary JSON requests at the proxy
        le=10 * 1024**3,
        description="The tenant's own upload cap; at most the plan's. The homeserver and the "
        "proxy enforce the smaller of the two (null: the plan's).",
    )
    turn: TurnIn | None = Field(default=None, description="TURN relay for voice/video calls")
    oidc: OidcIn | None = Field(
        default=None, description="An OpenID Connect identity provider for single sign-on"
    )

    _display_name = field_validator("display_name")(
        lambda cls, v: v if v is None else TenantCreate._display_name(v)
    )

    def audit_details(self) -> dict[str, object]:
        """What the audit log keeps of this change: every given field, secrets only as
        'changed'."""
        details = self.model_dump(
            mode="json",
            exclude_unset=True,
            exclude={"turn": {"shared_secret"}, "oidc": {"client_secret"}},
        )
        if self.turn is not None and self.turn.shared_secret is not None:
            details["turn"]["shared_secret_changed"] = True
        if self.oidc is not None and self.oidc.client_secret is not None:
            details["oidc"]["client_secret_changed"] = True
        return details


class FederationOut(BaseModel):
    mode: FederationMode
    allowed_servers: list[str]


class TurnOut(BaseModel):
    uris: list[str]
    user_lifetime_s: int
    shared_secret_set: bool


class OidcOut(BaseModel):
    issuer: str
    client_id: str
    display_name: str | None
    scopes: list[str]
    client_secret_set: bool


class HomeserverSettingsOut(BaseModel):
    """The tenant's homeserver settings (secrets only as `…_set`)."""

    federation: FederationOut
    registration: RegistrationPolicy
    message_retention: RetentionIn | None
    max_upload_size_bytes: int | None = Field(
        description="The tenant's own cap (null: the plan's); the smaller one applies"
    )
    turn: TurnOut | None
    oidc: OidcOut | None


class OperationRef(BaseModel):
    id: uuid.UUID
    url: str


class HomeserverStateOut(BaseModel):
    """Whether the tenant's homeserver runs. `asleep`: stopped after its plan's idle time
    (`limits.idle_after_seconds`) while the tenant stays active; the next request wakes it."""

    state: Literal["starting", "awake", "asleep", "stopped"]
    asleep_since: datetime | None = None


class TenantOut(BaseModel):
    id: uuid.UUID
    slug: str
    display_name: str
    server_name: str
    status: TenantStatus
    plan: str
    homeserver_url: str = Field(description="Base URL Matrix clients use (through the proxy)")
    homeserver_path_url: str = Field(description="Same homeserver under the proxy's /t/<slug>")
    settings: HomeserverSettingsOut
    homeserver: HomeserverStateOut
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
