"""The API's objects as typed models (pydantic). Unknown fields are kept, not refused: a newer
API adding a field must not break an older SDK. States stay strings for the same reason; the
constants below name the ones the API has today."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


TENANT_STATUSES = (
    "pending",
    "provisioning",
    "active",
    "suspended",
    "deleting",
    "deleted",
    "failed",
)
OPERATION_STATES = ("pending", "running", "succeeded", "failed")
FINISHED_OPERATION_STATES = ("succeeded", "failed")


class OperationRef(Model):
    id: uuid.UUID
    url: str


class Tenant(Model):
    id: uuid.UUID
    slug: str
    display_name: str
    server_name: str
    status: str
    plan: str
    homeserver_url: str
    homeserver_path_url: str
    settings: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


class TenantAccepted(Tenant):
    """A tenant as a lifecycle request left it (202): ``operation`` carries out the change."""

    operation: OperationRef


class OperationEvent(Model):
    at: datetime
    event: str
    attempt: int
    step: str | None = None
    detail: str | None = None
    delay_s: float | None = None


class Operation(Model):
    id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    state: str
    attempts: int
    steps_done: list[str]
    last_error: str | None = None
    history: list[OperationEvent] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_OPERATION_STATES


class ApiKey(Model):
    id: str
    name: str
    scopes: list[str]
    tenant_id: uuid.UUID | None = None
    created_by: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The secret; shown once", repr=False)


class Plan(Model):
    id: uuid.UUID
    code: str
    name: str
    currency: str
    base_fee: int = Field(description="Minor units of currency, per month")
    prices: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    allow_open_registration: bool = False
    is_default: bool = False
    created_at: datetime
    updated_at: datetime


class UsageBucket(Model):
    start: datetime
    values: dict[str, int]


class Usage(Model):
    tenant_id: uuid.UUID
    from_: datetime | None = Field(default=None, alias="from")
    to: datetime | None = None
    granularity: str | None = None
    totals: dict[str, int]
    series: list[UsageBucket] | None = None


class Participant(Model):
    id: uuid.UUID
    kind: str
    user_id: str
    display_name: str | None = None
    status: str
    expires_at: datetime | None = None
    joined_at: datetime | None = None


class Context(Model):
    id: uuid.UUID
    ref: str
    title: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    room_id: str
    status: str
    message_count: int = 0
    last_activity_at: datetime | None = None
    created_at: datetime
    closed_at: datetime | None = None
    participants: list[Participant] = Field(default_factory=list)


class Component(Model):
    name: str
    up: bool
    detail: str


class HomeserverStatus(Model):
    tenant_id: uuid.UUID
    slug: str
    up: bool
    detail: str


class PlatformStatus(Model):
    status: str
    checked_at: datetime
    version: str
    components: list[Component]
    homeservers: list[HomeserverStatus] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class HomeserverLogs(Model):
    tenant_id: uuid.UUID
    backend: str
    lines: list[str]
