"""GET /v1/tenants/{id}/readiness: can Element, Element X and SDKs use this homeserver?"""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from platform_core.models import utcnow
from tenant_api.deps import SessionDep, SettingsDep, TenantsRead
from tenant_api.readiness.schemas import ReadinessCheckOut, ReadinessOut
from tenant_api.readiness.service import check_readiness
from tenant_api.tenants.repository import TenantRepository

router = APIRouter(prefix="/v1/tenants/{tenant_id}/readiness", tags=["readiness"])


@router.get(
    "",
    response_model=ReadinessOut,
    summary="Client readiness check",
    description="Runs checks against the tenant's homeserver through the proxy, as a client "
    "would: simplified sliding sync (Element X), password sign-in, /.well-known/matrix/client, "
    "TURN (if set) and federation as configured. Each failed check carries a one-line fix. "
    "Takes up to C3_READINESS_TIMEOUT_S seconds; an unreachable homeserver gives failed "
    "checks, not an error.",
    name="readiness.get",
)
async def get_readiness(
    tenant_id: uuid.UUID, session: SessionDep, principal: TenantsRead, settings: SettingsDep
) -> ReadinessOut:
    tenant = await TenantRepository(session, principal).get_or_404(tenant_id)
    checks = await check_readiness(tenant, settings)
    return ReadinessOut(
        tenant_id=tenant.id,
        homeserver_url=settings.homeserver_url(tenant.server_name),
        checked_at=utcnow(),
        ready=all(check.ok is not False for check in checks),
        checks=[ReadinessCheckOut(**check.as_dict()) for check in checks],
    )
