"""/v1/tenants/{id}/users: Matrix accounts on the tenant's homeserver."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, status
from pydantic import AfterValidator

from platform_core.errors import InvalidRequest
from tenant_api.deps import AuditDep, SessionDep, SettingsDep, TenantsRead, UsersWrite
from tenant_api.users import service
from tenant_api.users.schemas import (
    HomeserverUserCreate,
    HomeserverUserDeactivate,
    HomeserverUserOut,
    HomeserverUserPage,
    HomeserverUserPatch,
    check_username,
)

router = APIRouter(prefix="/v1/tenants/{tenant_id}/users", tags=["users"])


Username = Annotated[
    str,
    Path(description="The Matrix localpart, e.g. alice: a-z, 0-9 and . _ = -"),
    AfterValidator(check_username),
]


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=HomeserverUserOut, name="users.create"
)
async def create_user(
    tenant_id: uuid.UUID,
    body: HomeserverUserCreate,
    session: SessionDep,
    principal: UsersWrite,
    settings: SettingsDep,
    audit: AuditDep,
) -> HomeserverUserOut:
    tenant, homeserver, box = await service.homeserver_of(tenant_id, session, principal, settings)
    return await service.create_user(tenant, homeserver, body, box, audit)


@router.get("", response_model=HomeserverUserPage, name="users.list")
async def list_users(
    tenant_id: uuid.UUID,
    session: SessionDep,
    principal: TenantsRead,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=20)] = None,
) -> HomeserverUserPage:
    """Accounts on the homeserver by name (deactivated ones included, flagged)."""
    if cursor is not None and not cursor.isdigit():
        raise InvalidRequest("cursor: not a cursor this API returned")
    tenant, homeserver, box = await service.homeserver_of(tenant_id, session, principal, settings)
    return await service.list_users(tenant, homeserver, box, start=int(cursor or 0), limit=limit)


@router.get("/{username}", response_model=HomeserverUserOut, name="users.get")
async def get_user(
    tenant_id: uuid.UUID,
    username: Username,
    session: SessionDep,
    principal: TenantsRead,
    settings: SettingsDep,
) -> HomeserverUserOut:
    tenant, homeserver, box = await service.homeserver_of(tenant_id, session, principal, settings)
    return await service.get_user(tenant, homeserver, box, username)


@router.patch("/{username}", response_model=HomeserverUserOut, name="users.update")
async def update_user(
    tenant_id: uuid.UUID,
    username: Username,
    body: HomeserverUserPatch,
    session: SessionDep,
    principal: UsersWrite,
    settings: SettingsDep,
    audit: AuditDep,
) -> HomeserverUserOut:
    """Display name, admin flag, password reset (which signs the user out everywhere)."""
    tenant, homeserver, box = await service.homeserver_of(tenant_id, session, principal, settings)
    return await service.update_user(tenant, homeserver, box, audit, username, body)


@router.post("/{username}/deactivate", response_model=HomeserverUserOut, name="users.deactivate")
async def deactivate_user(
    tenant_id: uuid.UUID,
    username: Username,
    body: HomeserverUserDeactivate,
    session: SessionDep,
    principal: UsersWrite,
    settings: SettingsDep,
    audit: AuditDep,
) -> HomeserverUserOut:
    """Deactivate for good (Synapse cannot undo it); with `erase`, also erase the user's
    messages for future room members. Repeating it changes nothing."""
    tenant, homeserver, box = await service.homeserver_of(tenant_id, session, principal, settings)
    return await service.deactivate_user(tenant, homeserver, box, audit, username, erase=body.erase)
