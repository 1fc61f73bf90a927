"""The expiry beat task: deactivates the homeserver accounts of external participants whose
credential expired, or whose removal or context's closing a crash interrupted. Their tokens
already stopped working at expiry (the homeserver enforces ``valid_until_ms``); this makes
the account itself unusable and takes it out of the room."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from datetime import datetime

from platform_core import admin_token
from platform_core.celery import TaskNames, celery_app
from platform_core.crypto import SecretBox
from platform_core.db import task_session
from platform_core.errors import C3Error
from platform_core.models import ContextParticipant, ParticipantState, TenantStatus, utcnow
from platform_core.settings import get_settings
from platform_core.synapse_admin import SynapseAdminClient, TokenRenewer
from tenant_api.contexts.matrix import cut_off_external
from tenant_api.contexts.repository import ExpiryRepository

log = logging.getLogger(__name__)
app = celery_app()

SWEEP_BATCH = 200


async def _cut_off_all(
    upstream: str, token: str, renew: TokenRenewer, externals: dict[str, str | None]
) -> set[str]:
    """The user ids that are cut off now (already, or by this call); ``externals``: user id →
    its credential, if still kept."""
    done: set[str] = set()
    async with SynapseAdminClient(upstream, access_token=token, renew_token=renew) as admin:
        for user_id, credential in externals.items():
            try:
                await cut_off_external(admin, upstream, user_id, credential)
                done.add(user_id)
            except C3Error as exc:  # the next sweep tries again
                log.warning("deactivating an external participant failed: %s", exc)
    return done


def sweep(now: datetime) -> dict[str, int]:
    """One pass; returns how many accounts were cut off and how many must wait."""
    box = SecretBox(get_settings().require_secret_key())
    cut_off = waiting = 0
    with task_session() as session:
        repo = ExpiryRepository(session)
        by_tenant: dict[uuid.UUID, list[ContextParticipant]] = defaultdict(list)
        for participant in repo.due(now, SWEEP_BATCH):
            by_tenant[participant.tenant_id].append(participant)
        for tenant_id, participants in by_tenant.items():
            found = repo.homeserver(tenant_id)
            if found is None or found[0].status is not TenantStatus.ACTIVE:
                waiting += len(participants)  # suspended or going away: its tokens are dead
                continue
            tenant, hs = found
            if hs.upstream_url is None or hs.admin_token_encrypted is None:
                waiting += len(participants)
                continue
            externals = {
                p.user_id: box.decrypt(p.credential_encrypted) if p.credential_encrypted else None
                for p in participants
            }
            done = asyncio.run(
                _cut_off_all(
                    hs.upstream_url,
                    box.decrypt(hs.admin_token_encrypted),
                    admin_token.renewer(hs.id, box),
                    externals,
                )
            )
            for participant in participants:
                if participant.user_id in done:
                    if participant.status is ParticipantState.ACTIVE:
                        participant.status = ParticipantState.EXPIRED
                    participant.cut_off_at = now
                    participant.credential_encrypted = None
                    cut_off += 1
                else:
                    waiting += 1
    return {"cut_off": cut_off, "waiting": waiting}


@app.task(name=TaskNames.EXPIRE_CONTEXT_PARTICIPANTS, acks_late=True)
def expire_context_participants() -> dict[str, int]:
    return sweep(utcnow())
