"""Operator pages: the fleet (every tenant with status, plan, MAU this month and its last
operation; filters and search), failed operations with a Retry button, and the plans. A tenant's
drill-down is the tenant pages (``views_tenant``), read as operator."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from platform_core.auth import Scope
from platform_core.errors import NotFound
from platform_core.models import Meter, Tenant, TenantStatus
from tenant_api.deps import SessionDep, SettingsDep
from tenant_api.operations import service as operations
from tenant_api.operations.repository import OperationRepository
from tenant_api.plans import service as plans
from tenant_api.plans.repository import PlanRepository
from tenant_api.portal.rendering import render
from tenant_api.portal.routing import PortalRoute, UserDep, done, parse_id
from tenant_api.tenants import service as tenants
from tenant_api.tenants.repository import TenantRepository
from tenant_api.usage.repository import UsageRepository

router = APIRouter(prefix="/portal", route_class=PortalRoute)

_FLEET_PAGE = 500
_FLEET_MAX = 10_000


def _month_bounds(now: datetime) -> tuple[datetime, datetime]:
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


@router.get("/fleet", name="portal.fleet")
async def fleet(
    request: Request,
    user: UserDep,
    session: SessionDep,
    settings: SettingsDep,
    q: Annotated[str, Query(max_length=100)] = "",
    status: Annotated[str, Query(max_length=20)] = "",
    plan: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    user.require(Scope.TENANTS_READ, platform_wide=True)
    repository = TenantRepository(session, user.principal)
    rows: list[Tenant] = []
    after = None
    while len(rows) < _FLEET_MAX:
        page = await repository.page(limit=_FLEET_PAGE, after=after)
        rows.extend(page)
        if len(page) < _FLEET_PAGE:
            break
        after = (page[-1].created_at, page[-1].id)
    codes = await repository.plan_codes({t.plan_id for t in rows})
    needle = q.strip().lower()
    shown = [
        t
        for t in rows
        if (not status or t.status.value == status)
        and (not plan or codes[t.plan_id] == plan)
        and (not needle or needle in f"{t.slug} {t.display_name} {t.server_name}".lower())
    ]
    ids = [t.id for t in shown]
    start, end = _month_bounds(datetime.now(UTC))
    mau = await UsageRepository(session).totals_by_tenant(ids, Meter.ACTIVE_USERS.value, start, end)
    latest = await OperationRepository(session, user.principal).latest_for(ids)
    asleep = await repository.asleep_since(set(ids))
    return await render(
        request,
        "fleet.html",
        tenants=[
            (
                tenants.to_out(t, codes[t.plan_id], settings, asleep_since=asleep.get(t.id)),
                mau.get(t.id, 0),
                latest.get(t.id),
            )
            for t in shown
        ],
        total=len(rows),
        q=q,
        status_filter=status,
        plan=plan,
        statuses=[s.value for s in TenantStatus],
        plans=sorted(set(codes.values())),
        title="Fleet",
        page="fleet",
    )


@router.get("/operations/failed", name="portal.failed_operations")
async def failed_operations(request: Request, user: UserDep, session: SessionDep) -> Response:
    user.require(Scope.TENANTS_WRITE, platform_wide=True)
    failed = await OperationRepository(session, user.principal).failed(limit=200)
    return await render(
        request, "failed_operations.html", failed=failed, title="Failed operations", page="failed"
    )


@router.post("/operations/{operation_id}/retry", name="portal.retry")
async def retry(
    request: Request, operation_id: str, user: UserDep, session: SessionDep
) -> Response:
    request.state.portal_back = "/portal/operations/failed"
    user.require(Scope.TENANTS_WRITE, platform_wide=True)
    operation = await OperationRepository(session, user.principal).get(parse_id(operation_id))
    if operation is None:
        raise NotFound(f"operation {operation_id} not found")
    await operations.retry(session, user.audit(request, session), operation)
    message = (
        f"The {operation.kind.value} operation runs again (its state is now "
        f"{operation.state.value})."
    )
    return await done(user, "/portal/operations/failed", message)


@router.get("/plans", name="portal.plans_page")
async def plans_page(request: Request, user: UserDep, session: SessionDep) -> Response:
    user.require(Scope.PLANS_WRITE, platform_wide=True)
    items = [plans.to_out(p) for p in await PlanRepository(session).list()]
    return await render(request, "plans.html", plans=items, title="Plans", page="plans")
