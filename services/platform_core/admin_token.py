"""The platform admin's access token on a tenant homeserver, healed when Synapse refuses it.

A token can die behind the platform's back (a ``logout/all`` by anyone who held it). Whoever
then gets ``M_UNKNOWN_TOKEN`` from the admin API signs the platform admin in again with the
password kept in the homeserver's secrets, stores the new token encrypted, and writes the
audit event ``homeserver.admin_token_renewed`` (actor ``system``). Concurrent renewals settle
by compare-and-set on the stored ciphertext: the first one stored wins, a loser signs its
own new session out again and uses the winner's token.
"""

from __future__ import annotations

import logging
import uuid

import httpx
from sqlalchemy import select, update

from platform_core.audit import add_event
from platform_core.crypto import SecretBox
from platform_core.db import request_session
from platform_core.errors import UpstreamError
from platform_core.models import Homeserver
from platform_core.synapse_admin import TokenRenewer, login_with_password

log = logging.getLogger(__name__)

ACTOR = "system"
RENEWED = "homeserver.admin_token_renewed"


def renewer(homeserver_id: uuid.UUID, box: SecretBox, *, request_id: str = "-") -> TokenRenewer:
    """A ``SynapseAdminClient(renew_token=…)`` for this homeserver's platform admin."""

    async def renew(refused: str) -> str:
        return await renew_admin_token(homeserver_id, box, refused, request_id=request_id)

    return renew


async def renew_admin_token(
    homeserver_id: uuid.UUID, box: SecretBox, refused: str, *, request_id: str = "-"
) -> str:
    """A working admin token in place of ``refused``. Commits in its own transaction, so the
    new token is kept whatever becomes of the request that found the old one dead."""
    async with request_session() as session:
        hs = await session.get(Homeserver, homeserver_id)
        if hs is None or hs.admin_token_encrypted is None or hs.secrets_encrypted is None:
            raise UpstreamError("the homeserver has no platform admin to renew")
        stored_ciphertext = hs.admin_token_encrypted
        stored = box.decrypt(stored_ciphertext)
        if stored != refused:
            return stored  # renewed by someone else meanwhile
        if hs.upstream_url is None or hs.admin_user_id is None:
            raise UpstreamError("the homeserver is not ready for its platform admin")
        base_url, user_id, tenant_id = hs.upstream_url, hs.admin_user_id, hs.tenant_id
        password = box.decrypt_json(hs.secrets_encrypted).get("admin_password")
    if not isinstance(password, str):
        raise UpstreamError("the homeserver's secrets hold no platform admin password")

    fresh = await login_with_password(base_url, user_id, password)
    async with request_session() as session:
        stored_now = await session.execute(
            update(Homeserver)
            .where(
                Homeserver.id == homeserver_id,
                Homeserver.admin_token_encrypted == stored_ciphertext,
            )
            .values(admin_token_encrypted=box.encrypt(fresh))
        )
        if stored_now.rowcount == 1:  # type: ignore[attr-defined]
            add_event(
                session,
                actor=ACTOR,
                action=RENEWED,
                target_type="homeserver",
                target_id=tenant_id,
                request_id=request_id,
                tenant_id=tenant_id,
                details={"admin_user_id": user_id, "reason": "token refused (M_UNKNOWN_TOKEN)"},
            )
            log.warning("tenant %s: platform admin token was refused; renewed", tenant_id)
            return fresh
        winner = await session.scalar(
            select(Homeserver.admin_token_encrypted).where(Homeserver.id == homeserver_id)
        )
    await _logout(base_url, fresh)  # lost the race: keep no stray session of ours
    if winner is None:
        raise UpstreamError("the homeserver's platform admin token went away")
    return box.decrypt(winner)


async def _logout(base_url: str, token: str) -> None:
    """Best effort: an unused admin session is harmless while no one else holds its token."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=15.0) as client:
            await client.post("/_matrix/client/v3/logout", json={})
    except httpx.HTTPError:
        log.info("could not sign out a spare platform admin session")
