"""Users on a tenant's homeserver, managed through its Synapse admin API. The platform's own
admin account is never listed, changed or deactivated through here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from platform_core import admin_token
from platform_core.auth import Principal
from platform_core.crypto import SecretBox
from platform_core.errors import Conflict, InvalidRequest, NotFound
from platform_core.models import Homeserver, Tenant, TenantStatus
from platform_core.settings import Settings
from platform_core.synapse_admin import SynapseAdminClient
from tenant_api.kit.audit import AuditContext
from tenant_api.tenants.repository import TenantRepository
from tenant_api.users.schemas import (
    RESERVED_LOCALPARTS,
    USER_ID_MAX,
    HomeserverUserCreate,
    HomeserverUserOut,
    HomeserverUserPage,
    HomeserverUserPatch,
)


async def homeserver_of(
    tenant_id: uuid.UUID, session: AsyncSession, principal: Principal, settings: Settings
) -> tuple[Tenant, Homeserver | None, SecretBox]:
    """The tenant (404 unless this principal sees it), its homeserver and the secrets box."""
    tenants = TenantRepository(session, principal)
    tenant = await tenants.get_or_404(tenant_id)
    homeserver = await tenants.get_homeserver(tenant_id)
    return tenant, homeserver, SecretBox(settings.require_secret_key())


@asynccontextmanager
async def admin_client(
    tenant: Tenant, homeserver: Homeserver | None, box: SecretBox
) -> AsyncIterator[SynapseAdminClient]:
    if tenant.status is not TenantStatus.ACTIVE or homeserver is None:
        raise Conflict(f"tenant is {tenant.status.value}; its users are managed while it is active")
    if homeserver.admin_token_encrypted is None or homeserver.upstream_url is None:
        raise Conflict("tenant homeserver is not ready yet")
    token = box.decrypt(homeserver.admin_token_encrypted)
    async with SynapseAdminClient(
        homeserver.upstream_url,
        access_token=token,
        renew_token=admin_token.renewer(homeserver.id, box),
    ) as client:
        yield client


def _out(tenant: Tenant, answer: dict[str, Any], username: str) -> HomeserverUserOut:
    return HomeserverUserOut(
        user_id=f"@{username}:{tenant.server_name}",
        username=username,
        displayname=answer.get("displayname"),
        admin=bool(answer.get("admin")),
        deactivated=bool(answer.get("deactivated")),
    )


def _full_user_id(tenant: Tenant, username: str) -> str:
    user_id = f"@{username}:{tenant.server_name}"
    if len(user_id) > USER_ID_MAX:
        raise InvalidRequest(
            f"username: too long for this homeserver; @username:{tenant.server_name} may have"
            f" at most {USER_ID_MAX} characters"
        )
    return user_id


def _user_id(tenant: Tenant, username: str) -> str:
    if username in RESERVED_LOCALPARTS:
        raise NotFound(f"user {username} not found")
    return _full_user_id(tenant, username)


async def create_user(
    tenant: Tenant,
    homeserver: Homeserver | None,
    body: HomeserverUserCreate,
    box: SecretBox,
    audit: AuditContext,
) -> HomeserverUserOut:
    user_id = _full_user_id(tenant, body.username)
    async with admin_client(tenant, homeserver, box) as client:
        answer = await client.create_user(
            user_id, password=body.password, displayname=body.displayname, admin=body.admin
        )
    audit.record(
        "homeserver_user.create",
        "homeserver_user",
        user_id,
        tenant_id=tenant.id,
        details={"admin": body.admin},
    )
    return _out(
        tenant, {"displayname": body.displayname, "admin": body.admin, **answer}, body.username
    )


async def list_users(
    tenant: Tenant, homeserver: Homeserver | None, box: SecretBox, *, start: int, limit: int
) -> HomeserverUserPage:
    async with admin_client(tenant, homeserver, box) as client:
        page = await client.list_users(start=start, limit=limit)
    suffix = f":{tenant.server_name}"
    items = []
    for user in page.get("users", []):
        name = str(user.get("name", ""))
        username = name[1:].removesuffix(suffix) if name.endswith(suffix) else name
        if username in RESERVED_LOCALPARTS:
            continue
        items.append(_out(tenant, user, username))
    next_token = page.get("next_token")
    return HomeserverUserPage(
        items=items, next_cursor=str(next_token) if next_token is not None else None
    )


async def get_user(
    tenant: Tenant, homeserver: Homeserver | None, box: SecretBox, username: str
) -> HomeserverUserOut:
    user_id = _user_id(tenant, username)
    async with admin_client(tenant, homeserver, box) as client:
        answer = await client.get_user(user_id)
    if answer is None:
        raise NotFound(f"user {username} not found")
    return _out(tenant, answer, username)


async def update_user(
    tenant: Tenant,
    homeserver: Homeserver | None,
    box: SecretBox,
    audit: AuditContext,
    username: str,
    body: HomeserverUserPatch,
) -> HomeserverUserOut:
    user_id = _user_id(tenant, username)
    changes: dict[str, Any] = {}
    if body.displayname is not None:
        changes["displayname"] = body.displayname
    if body.admin is not None:
        changes["admin"] = body.admin
    if body.password is not None:
        changes["password"] = body.password
        changes["logout_devices"] = True  # a reset password ends every existing session
    async with admin_client(tenant, homeserver, box) as client:
        current = await client.get_user(user_id)
        if current is None:
            raise NotFound(f"user {username} not found")
        if current.get("deactivated"):
            raise Conflict(f"user {username} is deactivated")
        answer = await client.update_user(user_id, changes) if changes else current
    details = body.model_dump(exclude_none=True, exclude={"password"})
    if body.password is not None:
        details["password_reset"] = True
    audit.record(
        "homeserver_user.update",
        "homeserver_user",
        user_id,
        tenant_id=tenant.id,
        details=details,
    )
    return _out(tenant, answer, username)


async def deactivate_user(
    tenant: Tenant,
    homeserver: Homeserver | None,
    box: SecretBox,
    audit: AuditContext,
    username: str,
    *,
    erase: bool,
) -> HomeserverUserOut:
    user_id = _user_id(tenant, username)
    async with admin_client(tenant, homeserver, box) as client:
        current = await client.get_user(user_id)
        if current is None:
            raise NotFound(f"user {username} not found")
        if not current.get("deactivated"):
            await client.deactivate_user(user_id, erase=erase)
        answer = await client.get_user(user_id) or {**current, "deactivated": True}
    audit.record(
        "homeserver_user.deactivate",
        "homeserver_user",
        user_id,
        tenant_id=tenant.id,
        details={"erase": erase},
    )
    return _out(tenant, answer, username)
