"""Users on a tenant's homeserver, managed through its Synapse admin API."""

from __future__ import annotations

from platform_core.crypto import SecretBox
from platform_core.errors import Conflict
from platform_core.models import Homeserver, Tenant, TenantStatus
from platform_core.synapse_admin import SynapseAdminClient
from tenant_api.users.schemas import HomeserverUserCreate, HomeserverUserOut


async def create_user(
    tenant: Tenant, homeserver: Homeserver | None, body: HomeserverUserCreate, box: SecretBox
) -> HomeserverUserOut:
    if tenant.status is not TenantStatus.ACTIVE or homeserver is None:
        raise Conflict(f"tenant is {tenant.status.value}; users can be created once it is active")
    if homeserver.admin_token_encrypted is None or homeserver.upstream_url is None:
        raise Conflict("tenant homeserver is not ready yet")
    user_id = f"@{body.username}:{tenant.server_name}"
    token = box.decrypt(homeserver.admin_token_encrypted)
    async with SynapseAdminClient(homeserver.upstream_url, access_token=token) as client:
        answer = await client.create_user(
            user_id, password=body.password, displayname=body.displayname, admin=body.admin
        )
    return HomeserverUserOut(
        user_id=user_id,
        username=body.username,
        displayname=answer.get("displayname") or body.displayname,
        admin=bool(answer.get("admin", body.admin)),
    )
