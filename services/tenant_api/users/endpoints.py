"""/v1/tenants/{id}/users: Matrix accounts on the tenant's homeserver."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, status

from platform_core.crypto import SecretBox
from tenant_api.audit.service import record
from tenant_api.deps import SessionDep, SettingsDep, UsersWrite
from tenant_api.tenants.repository import TenantRepository
from tenant_api.users import service
from tenant_api.users.schemas import HomeserverUserCreate, HomeserverUserOut

router = APIRouter(prefix="/v1/tenants/{tenant_id}/users", tags=["users"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=HomeserverUserOut)
async def create_user(
    tenant_id: uuid.UUID,
    body: HomeserverUserCreate,
    request: Request,
    session: SessionDep,
    principal: UsersWrite,
    settings: SettingsDep,
) -> HomeserverUserOut:
    tenants = TenantRepository(session, principal)
    tenant = await tenants.get_or_404(tenant_id)
    homeserver = await tenants.get_homeserver(tenant_id)
    created = await service.create_user(
        tenant, homeserver, body, SecretBox(settings.require_secret_key())
    )
    record(
        session,
        request,
        principal,
        "homeserver_user.create",
        "homeserver_user",
        created.user_id,
        tenant_id=tenant.id,
        details={"admin": body.admin},
    )
    await session.commit()
    return created
