"""/v1/tenants: create (async, 202 + operation), list (cursor-paginated), get, delete."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from platform_core.auth import Principal
from platform_core.crypto import SecretBox
from platform_core.models import OperationKind
from platform_core.settings import Settings
from tenant_api.deps import (
    AuditDep,
    SessionDep,
    SettingsDep,
    TenantsAdmin,
    TenantsRead,
    TenantsWrite,
)
from tenant_api.kit.audit import AuditContext
from tenant_api.kit.pagination import decode_cursor, encode_cursor
from tenant_api.operations.repository import OperationRepository
from tenant_api.tenants import service
from tenant_api.tenants.repository import TenantRepository
from tenant_api.tenants.schemas import (
    OperationRef,
    TenantAccepted,
    TenantCreate,
    TenantOut,
    TenantPage,
    TenantPatch,
)
from tenant_api.urls import absolute_url

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


def _accepted(
    request: Request, response: Response, out: TenantOut, operation_id: uuid.UUID
) -> TenantAccepted:
    url = absolute_url(request, "operations.get", operation_id=operation_id)
    response.headers["Location"] = url
    return TenantAccepted(**out.model_dump(), operation=OperationRef(id=operation_id, url=url))


@router.post(
    "", status_code=status.HTTP_202_ACCEPTED, response_model=TenantAccepted, name="tenants.create"
)
async def create_tenant(
    body: TenantCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: TenantsAdmin,
    settings: SettingsDep,
    audit: AuditDep,
) -> TenantAccepted:
    tenants = TenantRepository(session, principal)
    tenant, plan_code, operation = await service.create_tenant(
        tenants, OperationRepository(session, principal), audit, body, settings
    )
    return _accepted(request, response, service.to_out(tenant, plan_code, settings), operation.id)


@router.get("", response_model=TenantPage, name="tenants.list")
async def list_tenants(
    session: SessionDep,
    principal: TenantsRead,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> TenantPage:
    tenants = TenantRepository(session, principal)
    after = decode_cursor(cursor) if cursor else None
    rows = await tenants.page(limit=limit + 1, after=after)
    page, more = rows[:limit], len(rows) > limit
    codes = await tenants.plan_codes({t.plan_id for t in page})
    asleep = await tenants.asleep_since({t.id for t in page})
    return TenantPage(
        items=[
            service.to_out(t, codes[t.plan_id], settings, asleep_since=asleep.get(t.id))
            for t in page
        ],
        next_cursor=encode_cursor(page[-1]) if more else None,
    )


@router.get("/{tenant_id}", response_model=TenantOut, name="tenants.get")
async def get_tenant(
    tenant_id: uuid.UUID, session: SessionDep, principal: TenantsRead, settings: SettingsDep
) -> TenantOut:
    tenants = TenantRepository(session, principal)
    tenant = await tenants.get_or_404(tenant_id)
    codes = await tenants.plan_codes({tenant.plan_id})
    asleep = await tenants.asleep_since({tenant.id})
    return service.to_out(
        tenant, codes[tenant.plan_id], settings, asleep_since=asleep.get(tenant.id)
    )


@router.patch("/{tenant_id}", response_model=TenantOut, name="tenants.update")
async def update_tenant(
    tenant_id: uuid.UUID,
    body: TenantPatch,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: TenantsWrite,
    settings: SettingsDep,
    audit: AuditDep,
) -> TenantOut:
    """Change the display name, the plan (operators only) or the homeserver settings
    (federation, registration, retention, upload cap, TURN, SSO). A change that alters the
    homeserver's config answers with `Location:` the reconfigure operation applying it; while
    one waits to start, further changes join it (same `Location:`) instead of queueing more
    homeserver restarts."""
    tenants = TenantRepository(session, principal)
    # Locked until commit: concurrent PATCHes of one tenant apply one after the other (no
    # lost settings, one pending reconfigure between them).
    tenant = await tenants.get_or_404(tenant_id, for_update=True)
    plan_code, operation, new_operation = await service.update_tenant(
        tenants,
        OperationRepository(session, principal),
        audit,
        tenant,
        body,
        SecretBox(settings.require_secret_key()),
        allowed_networks=settings.outbound_allowed_networks,
    )
    await session.flush()
    await session.refresh(tenant)
    if operation is not None:
        # The new plan's limits and settings reach the homeserver through this operation.
        response.headers["Location"] = absolute_url(
            request, "operations.get", operation_id=operation.id
        )
    return service.to_out(tenant, plan_code, settings)


@router.delete(
    "/{tenant_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TenantAccepted,
    name="tenants.delete",
)
async def delete_tenant(
    tenant_id: uuid.UUID,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: TenantsAdmin,
    settings: SettingsDep,
    audit: AuditDep,
    purge: Annotated[
        bool,
        Query(description="Delete the archived data at once instead of after the retention"),
    ] = False,
) -> TenantAccepted:
    """Stop the homeserver, withdraw its route and archive its data; the archive is purged
    after `C3_ARCHIVE_RETENTION_DAYS` (30), or at once with `?purge=true`. Billing records stay."""
    tenants = TenantRepository(session, principal)
    tenant = await tenants.get_or_404(tenant_id)
    operation = await service.delete_tenant(
        tenant, OperationRepository(session, principal), audit, purge=purge
    )
    codes = await tenants.plan_codes({tenant.plan_id})
    out = service.to_out(tenant, codes[tenant.plan_id], settings)
    return _accepted(request, response, out, operation.id)


async def _change_serving(
    tenant_id: uuid.UUID,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: Principal,
    settings: Settings,
    audit: AuditContext,
    kind: OperationKind,
) -> TenantAccepted:
    tenants = TenantRepository(session, principal)
    tenant = await tenants.get_or_404(tenant_id)
    operations = OperationRepository(session, principal)
    operation = await service.change_serving(tenant, operations, audit, kind)
    codes = await tenants.plan_codes({tenant.plan_id})
    out = service.to_out(tenant, codes[tenant.plan_id], settings)
    return _accepted(request, response, out, operation.id)


@router.post(
    "/{tenant_id}/suspend",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TenantAccepted,
    name="tenants.suspend",
)
async def suspend_tenant(
    tenant_id: uuid.UUID,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: TenantsAdmin,
    settings: SettingsDep,
    audit: AuditDep,
) -> TenantAccepted:
    """Stop serving the tenant (its clients get `M_FORBIDDEN` from the proxy, its homeserver
    stops); all data is kept. Repeating it returns the suspension under way."""
    return await _change_serving(
        tenant_id, request, response, session, principal, settings, audit, OperationKind.SUSPEND
    )


@router.post(
    "/{tenant_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TenantAccepted,
    name="tenants.resume",
)
async def resume_tenant(
    tenant_id: uuid.UUID,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: TenantsAdmin,
    settings: SettingsDep,
    audit: AuditDep,
) -> TenantAccepted:
    """Start the homeserver again and serve the tenant's clients."""
    return await _change_serving(
        tenant_id, request, response, session, principal, settings, audit, OperationKind.RESUME
    )
