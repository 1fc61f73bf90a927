"""Response bodies of /v1/tenants/{id}/usage."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class UsageBucket(BaseModel):
    start: datetime = Field(description="Start of the UTC hour, day or month")
    values: dict[str, int]


class UsageOut(BaseModel):
    tenant_id: uuid.UUID
    from_: datetime | None = Field(alias="from", serialization_alias="from")
    to: datetime | None
    granularity: str | None = None
    totals: dict[str, int] = Field(
        description="Per meter: api_requests, bytes_in, bytes_out, messages, media_bytes, "
        "media_egress_bytes, calls, active_users (distinct users per calendar month: sum "
        "over whole months only)"
    )
    series: list[UsageBucket] | None = Field(
        default=None, description="With ?granularity=: buckets that have usage, in time order"
    )

    model_config = {"populate_by_name": True}


class ReconciliationCheck(BaseModel):
    meter: str
    checked_at: datetime = Field(description="When the homeserver was read")
    billed: int
    homeserver: int
    drift: int = Field(description="homeserver − billed; positive = usage went unbilled")


class ReconciliationOut(BaseModel):
    items: list[ReconciliationCheck]
