"""The platform application service's calls on a tenant homeserver (client-server API with
the ``as_token``, acting as the service user or as one of its external participants), and the
admin calls contexts need. One wire layer: ``SynapseAdminClient``'s (errors, timeouts)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from platform_core import admin_token, appservice
from platform_core.crypto import SecretBox
from platform_core.errors import Conflict
from platform_core.models import Homeserver, Tenant, TenantStatus
from platform_core.synapse_admin import SynapseAdminClient, TokenRefused, path_segment

_CLIENT = "/_matrix/client/v3"

# Power levels of a closed context: nobody but the platform (100) sends or changes anything.
CLOSED_LEVEL = 100


class ServiceUserClient(SynapseAdminClient):
    """Client-server calls authenticated by the application service token. ``as_user``:
    act as that user of the service's namespace (Synapse's identity assertion)."""

    @property
    def base_url(self) -> str:
        return str(self._client.base_url).rstrip("/")

    async def create_context_room(self, *, ref: str, title: str, metadata: dict[str, Any]) -> str:
        body = {
            "preset": "private_chat",
            "visibility": "private",
            "name": title,
            "initial_state": [
                {
                    "type": appservice.CONTEXT_STATE_TYPE,
                    "state_key": "",
                    "content": {"ref": ref, "metadata": metadata},
                },
                {
                    "type": "m.room.guest_access",
                    "state_key": "",
                    "content": {"guest_access": "forbidden"},
                },
            ],
            # Members talk; only the platform (the creator: above every level in room
            # version 12, 100 in older ones) invites, kicks and changes the room.
            "power_level_content_override": {
                "invite": 100,
                "kick": 100,
                "ban": 100,
                "redact": 50,
                "state_default": 100,
                "events_default": 0,
            },
        }
        answer = await self._request("POST", f"{_CLIENT}/createRoom", json=body)
        return str(answer["room_id"])

    async def register_external(self, localpart: str) -> str:
        body = {
            "type": "m.login.application_service",
            "username": localpart,
            "inhibit_login": True,
        }
        answer = await self._request("POST", f"{_CLIENT}/register", json=body)
        return str(answer["user_id"])

    async def set_displayname(self, user_id: str, name: str) -> None:
        await self._request(
            "PUT",
            f"{_CLIENT}/profile/{path_segment(user_id)}/displayname",
            params={"user_id": user_id},
            json={"displayname": name},
        )

    async def invite(self, room_id: str, user_id: str) -> None:
        await self._request(
            "POST", f"{_CLIENT}/rooms/{path_segment(room_id)}/invite", json={"user_id": user_id}
        )

    async def join_as(self, room_id: str, user_id: str) -> None:
        await self._request(
            "POST", f"{_CLIENT}/join/{path_segment(room_id)}", params={"user_id": user_id}, json={}
        )

    async def join(self, room_id: str) -> None:
        """Join as the token's own user."""
        await self._request("POST", f"{_CLIENT}/join/{path_segment(room_id)}", json={})

    async def logout(self) -> None:
        await self._request("POST", f"{_CLIENT}/logout", json={})

    async def kick(self, room_id: str, user_id: str, reason: str) -> None:
        await self._request(
            "POST",
            f"{_CLIENT}/rooms/{path_segment(room_id)}/kick",
            json={"user_id": user_id, "reason": reason},
        )

    async def send_text(self, room_id: str, body: str) -> str:
        txn = uuid.uuid4().hex
        answer = await self._request(
            "PUT",
            f"{_CLIENT}/rooms/{path_segment(room_id)}/send/m.room.message/{txn}",
            json={"msgtype": "m.notice", "body": body},
        )
        return str(answer["event_id"])

    async def make_read_only(self, room_id: str) -> None:
        """Power levels after which nobody but the platform sends, invites or changes state."""
        path = f"{_CLIENT}/rooms/{path_segment(room_id)}/state/m.room.power_levels/"
        levels = await self._request("GET", path)
        levels.update(
            events_default=CLOSED_LEVEL,
            state_default=CLOSED_LEVEL,
            invite=CLOSED_LEVEL,
            redact=CLOSED_LEVEL,
        )
        levels["events"] = {name: CLOSED_LEVEL for name in levels.get("events") or {}}
        await self._request("PUT", path, json=levels)


async def tenant_user_join(
    admin: SynapseAdminClient, client_base: str, room_id: str, user_id: str
) -> None:
    """Join a tenant user (already invited) on their behalf: a one-minute token from the admin
    API, used for the join and logged out at once."""
    token = await admin.login_as(user_id, valid_until_ms=int(time.time() * 1000) + 60_000)
    async with ServiceUserClient(client_base, access_token=token) as as_user:
        try:
            await as_user.join(room_id)
        finally:
            await as_user.logout()


async def cut_off_external(
    admin: SynapseAdminClient, client_base: str, user_id: str, token: str | None
) -> None:
    """End an external participant: log its credential out (Synapse files an admin-issued
    token under the admin, so deactivation alone would not end it) and deactivate the
    account (it leaves its room; no token of it works again). Repeating it changes nothing."""
    if token is not None:
        async with ServiceUserClient(client_base, access_token=token) as as_user:
            try:
                await as_user.logout()
            except TokenRefused:
                pass  # expired or logged out already
    found = await admin.get_user(user_id)
    if found is not None and not found.get("deactivated"):
        await admin.deactivate_user(user_id, erase=False)


def _ready(tenant: Tenant, homeserver: Homeserver | None) -> Homeserver:
    if tenant.status is not TenantStatus.ACTIVE or homeserver is None:
        raise Conflict(f"tenant is {tenant.status.value}; contexts are managed while it is active")
    if homeserver.admin_token_encrypted is None or homeserver.upstream_url is None:
        raise Conflict("tenant homeserver is not ready yet")
    return homeserver


def _appservice_secret(homeserver: Homeserver, box: SecretBox, name: str) -> str | None:
    if homeserver.secrets_encrypted is None:
        return None
    value = box.decrypt_json(homeserver.secrets_encrypted).get(name)
    return str(value) if value else None


def as_token_of(homeserver: Homeserver, box: SecretBox) -> str:
    token = _appservice_secret(homeserver, box, "appservice_as_token")
    if token is None:
        raise Conflict(
            "the tenant homeserver has no application service yet; it gets one when its"
            " config is next applied (reconfigure)"
        )
    return token


def hs_token_of(homeserver: Homeserver, box: SecretBox) -> str | None:
    return _appservice_secret(homeserver, box, "appservice_hs_token")


@asynccontextmanager
async def clients(
    tenant: Tenant, homeserver: Homeserver | None, box: SecretBox
) -> AsyncIterator[tuple[ServiceUserClient, SynapseAdminClient]]:
    """The service user's client and the platform admin's client of an active tenant."""
    hs = _ready(tenant, homeserver)
    upstream = str(hs.upstream_url)
    async with (
        ServiceUserClient(upstream, access_token=as_token_of(hs, box)) as service,
        SynapseAdminClient(
            upstream,
            access_token=box.decrypt(str(hs.admin_token_encrypted)),
            renew_token=admin_token.renewer(hs.id, box),
        ) as admin,
    ):
        yield service, admin
