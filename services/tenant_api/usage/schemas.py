"""Response bodies of /v1/tenants/{id}/usage."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class UsageOut(BaseModel):
    tenant_id: uuid.UUID
    from_: datetime | None = Field(alias="from", serialization_alias="from")
    to: datetime | None
    totals: dict[str, int] = Field(
        description="Per meter: api_requests, bytes_in, bytes_out, messages"
    )

    model_config = {"populate_by_name": True}
