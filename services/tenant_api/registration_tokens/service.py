"""Registration tokens, kept by the tenant's homeserver and managed through its Synapse admin
API. A token is a credential: it goes back to the caller who asked for it, never into logs or
audit events (those name it by fingerprint)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from platform_core.crypto import SecretBox
from platform_core.errors import NotFound
from platform_core.models import Homeserver, Tenant
from tenant_api.kit.audit import AuditContext
from tenant_api.registration_tokens.schemas import (
    RegistrationTokenCreate,
    RegistrationTokenList,
    RegistrationTokenOut,
)
from tenant_api.users.service import admin_client


def fingerprint(token: str) -> str:
    """How audit events name a token: enough to match create and delete, useless to sign up."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:16]


def _out(answer: dict[str, Any]) -> RegistrationTokenOut:
    expiry_ms = answer.get("expiry_time")
    expires_at = datetime.fromtimestamp(expiry_ms / 1000, UTC) if expiry_ms is not None else None
    uses_allowed = answer.get("uses_allowed")
    pending, completed = int(answer.get("pending") or 0), int(answer.get("completed") or 0)
    used_up = uses_allowed is not None and pending + completed >= uses_allowed
    expired = expires_at is not None and expires_at <= datetime.now(UTC)
    return RegistrationTokenOut(
        token=str(answer["token"]),
        uses_allowed=uses_allowed,
        pending=pending,
        completed=completed,
        expires_at=expires_at,
        valid=not (used_up or expired),
    )


async def create_token(
    tenant: Tenant,
    homeserver: Homeserver | None,
    box: SecretBox,
    audit: AuditContext,
    body: RegistrationTokenCreate,
) -> RegistrationTokenOut:
    expiry_ms = int(body.expires_at.timestamp() * 1000) if body.expires_at else None
    async with admin_client(tenant, homeserver, box) as client:
        answer = await client.create_registration_token(
            token=body.token,
            length=body.length,
            uses_allowed=body.uses_allowed,
            expiry_time_ms=expiry_ms,
        )
    created = _out(answer)
    audit.record(
        "registration_token.create",
        "registration_token",
        fingerprint(created.token),
        tenant_id=tenant.id,
        details={
            "uses_allowed": created.uses_allowed,
            "expires_at": created.expires_at.isoformat() if created.expires_at else None,
        },
    )
    return created


async def list_tokens(
    tenant: Tenant, homeserver: Homeserver | None, box: SecretBox, *, valid: bool | None
) -> RegistrationTokenList:
    async with admin_client(tenant, homeserver, box) as client:
        tokens = await client.list_registration_tokens(valid=valid)
    items = sorted((_out(t) for t in tokens), key=lambda t: t.token)
    return RegistrationTokenList(items=items)


async def delete_token(
    tenant: Tenant, homeserver: Homeserver | None, box: SecretBox, audit: AuditContext, token: str
) -> None:
    async with admin_client(tenant, homeserver, box) as client:
        if not await client.delete_registration_token(token):
            raise NotFound("no such registration token")
    audit.record(
        "registration_token.delete",
        "registration_token",
        fingerprint(token),
        tenant_id=tenant.id,
    )
