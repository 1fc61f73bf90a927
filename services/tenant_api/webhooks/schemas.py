"""Request and response bodies of /v1/webhook-endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from platform_core.webhook_events import EVENT_TYPES

_TYPES_RULE = "one or more of: " + ", ".join(EVENT_TYPES)


def _no_control(value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain control characters")
    return value


def _check_url(value: str) -> str:
    _no_control(value)
    parts = urlsplit(value)
    _ = parts.port  # ValueError (a 422) for a port that is not a number in range
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL such as https://example.com/webhooks")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; authenticate by the signature instead")
    return value


def _check_types(value: list[str]) -> list[str]:
    unknown = [t for t in value if t not in EVENT_TYPES]
    if unknown or not value:
        shown = ", ".join(unknown) if unknown else "none given"
        raise ValueError(f"unknown event types ({shown}); use {_TYPES_RULE}")
    return sorted(set(value), key=EVENT_TYPES.index)


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000, description="Where events are POSTed (http or https)")
    event_types: list[str] = Field(description=_TYPES_RULE)
    enabled: bool = True
    description: str = Field(default="", max_length=500)
    tenant_id: uuid.UUID | None = Field(
        default=None,
        description="Operators: the tenant whose events it receives; omit for every tenant's"
        " and the platform's. Tenant credentials: always their own tenant.",
    )

    _url = field_validator("url")(_check_url)
    _types = field_validator("event_types")(_check_types)
    _description = field_validator("description")(_no_control)


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=2000)
    event_types: list[str] | None = None
    enabled: bool | None = Field(
        default=None, description="true re-enables an endpoint the platform disabled"
    )
    description: str | None = Field(default=None, max_length=500)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v)

    @field_validator("event_types")
    @classmethod
    def _types(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_types(v)

    @field_validator("description")
    @classmethod
    def _description(cls, v: str | None) -> str | None:
        return None if v is None else _no_control(v)


class EndpointOut(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID | None
    url: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None = Field(
        description="Why the platform disabled it (410 Gone, or failing too long)"
    )
    description: str
    secret_rotation_ends_at: datetime | None = Field(
        description="Until then deliveries carry a signature with the previous secret too"
    )
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


class EndpointCreated(EndpointOut):
    secret: str = Field(description="whsec_…: shown only now; verify signatures with it")


class SecretRotated(BaseModel):
    secret: str = Field(description="The new whsec_… secret, shown only now")
    previous_secret_expires_at: datetime


class EndpointList(BaseModel):
    items: list[EndpointOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")


class AttemptOut(BaseModel):
    attempted_at: datetime
    status: str = Field(description="succeeded or failed")
    response_code: int | None
    latency_ms: int
    error: str | None


class DeliveryOut(BaseModel):
    id: uuid.UUID
    message_id: str = Field(description="The webhook-id header: the same on every attempt")
    event_id: uuid.UUID
    event_type: str
    status: str = Field(description="pending, succeeded or failed")
    attempt_count: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    attempts: list[AttemptOut]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")


class EventOut(BaseModel):
    id: uuid.UUID
    type: str
    tenant_id: uuid.UUID | None
    occurred_at: datetime
    data: dict[str, object]


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")
