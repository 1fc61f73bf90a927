"""GET /v1/tenants/{id}/usage: metered totals of one tenant, optionally as a time series."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from platform_core.errors import InvalidRequest
from platform_core.models import Meter
from tenant_api.deps import SessionDep, UsageRead
from tenant_api.tenants.repository import TenantRepository
from tenant_api.usage.repository import UsageRepository
from tenant_api.usage.schemas import (
    ReconciliationCheck,
    ReconciliationOut,
    UsageBucket,
    UsageOut,
)

router = APIRouter(prefix="/v1/tenants/{tenant_id}/usage", tags=["usage"])


def bucket_start(hour: datetime, granularity: str) -> datetime:
    if granularity == "day":
        return hour.replace(hour=0)
    if granularity == "month":
        return hour.replace(day=1, hour=0)
    return hour


@router.get("", response_model=UsageOut, response_model_by_alias=True, name="usage.get")
async def get_usage(
    tenant_id: uuid.UUID,
    session: SessionDep,
    principal: UsageRead,
    from_: Annotated[datetime | None, Query(alias="from", description="UTC, inclusive")] = None,
    to: Annotated[datetime | None, Query(description="UTC, exclusive")] = None,
    granularity: Annotated[
        Literal["hour", "day", "month"] | None,
        Query(description="Also return a series of UTC buckets that have usage"),
    ] = None,
    meter: Annotated[
        list[Meter] | None, Query(description="Only these meters (repeat the parameter)")
    ] = None,
) -> UsageOut:
    for name, value in (("from", from_), ("to", to)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequest(f"{name}: give a timezone, e.g. 2026-11-01T00:00:00Z")
    if from_ and to and from_ >= to:
        raise InvalidRequest("from must be before to")
    await TenantRepository(session, principal).get_or_404(tenant_id)
    meters = [m.value for m in (meter or list(Meter))]
    found = await UsageRepository(session).totals(tenant_id, from_, to)
    totals = {m: found.get(m, 0) for m in meters}
    series = None
    if granularity is not None:
        buckets: dict[datetime, dict[str, int]] = {}
        for hour, name, quantity in await UsageRepository(session).hourly(
            tenant_id, from_, to, meters
        ):
            values = buckets.setdefault(bucket_start(hour, granularity), dict.fromkeys(meters, 0))
            values[name] += quantity
        series = [UsageBucket(start=start, values=values) for start, values in buckets.items()]
    return UsageOut.model_validate(
        {
            "tenant_id": tenant_id,
            "from": from_,
            "to": to,
            "granularity": granularity,
            "totals": totals,
            "series": series,
        }
    )


@router.get("/reconciliation", response_model=ReconciliationOut, name="usage.reconciliation")
async def get_reconciliation(
    tenant_id: uuid.UUID,
    session: SessionDep,
    principal: UsageRead,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> ReconciliationOut:
    """Billed usage compared with the homeserver's own records (drift = homeserver − billed),
    newest check first."""
    await TenantRepository(session, principal).get_or_404(tenant_id)
    rows = await UsageRepository(session).reconciliations(tenant_id, limit)
    return ReconciliationOut(
        items=[
            ReconciliationCheck(
                meter=r.meter,
                checked_at=r.checked_at,
                billed=r.billed,
                homeserver=r.homeserver,
                drift=r.drift,
            )
            for r in rows
        ]
    )
