"""GET /v1/tenants/{id}/usage: metered totals of one tenant."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from platform_core.errors import InvalidRequest
from platform_core.models import Meter
from tenant_api.deps import OperatorDep, SessionDep
from tenant_api.tenants.repository import TenantRepository
from tenant_api.usage import repository
from tenant_api.usage.schemas import UsageOut

router = APIRouter(prefix="/v1/tenants/{tenant_id}/usage", tags=["usage"])


@router.get("", response_model=UsageOut, response_model_by_alias=True)
async def get_usage(
    tenant_id: uuid.UUID,
    session: SessionDep,
    principal: OperatorDep,
    from_: Annotated[datetime | None, Query(alias="from", description="UTC, inclusive")] = None,
    to: Annotated[datetime | None, Query(description="UTC, exclusive")] = None,
) -> UsageOut:
    for name, value in (("from", from_), ("to", to)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequest(f"{name}: give a timezone, e.g. 2026-11-01T00:00:00Z")
    if from_ and to and from_ >= to:
        raise InvalidRequest("from must be before to")
    await TenantRepository(session, principal).get_or_404(tenant_id)
    found = await repository.totals(session, tenant_id, from_, to)
    totals = {meter.value: found.get(meter.value, 0) for meter in Meter}
    return UsageOut.model_validate(
        {"tenant_id": tenant_id, "from": from_, "to": to, "totals": totals}
    )
