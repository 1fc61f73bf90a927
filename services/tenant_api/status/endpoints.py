"""GET /v1/status (the platform's components up or down) and GET /v1/tenants/{id}/logs (a
homeserver's recent log lines): operators only."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from tenant_api.deps import MetricsRead, SessionDep, SettingsDep, TenantsOperatorRead
from tenant_api.status import service
from tenant_api.status.schemas import LogsOut, StatusOut
from tenant_api.tenants.repository import TenantRepository

router = APIRouter(tags=["status"])


@router.get("/v1/status", response_model=StatusOut, name="status.get")
async def get_status(settings: SettingsDep, _: MetricsRead) -> StatusOut:
    """API, database, Redis, proxy, workers and every active tenant's homeserver, each up or
    down with what was checked. Always 200 (a report, not a health probe: use `/healthz`);
    `status` is `degraded` when anything is down. Takes at most `C3_WORKER_ANSWER_TIMEOUT_S`."""
    return await service.platform_status(settings)


@router.get("/v1/tenants/{tenant_id}/logs", response_model=LogsOut, name="tenants.logs")
async def get_tenant_logs(
    tenant_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: TenantsOperatorRead,
    lines: Annotated[int, Query(ge=1, le=1000, description="How many of the last lines")] = 100,
) -> LogsOut:
    """The tenant homeserver's last log lines (its log file on the local backend, its pod's log
    on Kubernetes), read by a worker; access tokens in them are redacted. 409 when the tenant
    has no homeserver yet; 503 when no worker answers in time."""
    tenants = TenantRepository(session, principal)
    tenant = await tenants.get_or_404(tenant_id)
    homeserver = await tenants.get_homeserver(tenant_id)
    return await service.homeserver_logs(tenant, homeserver, lines, settings)
