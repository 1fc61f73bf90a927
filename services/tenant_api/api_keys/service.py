"""API key rules: who may mint which scopes for which binding. Never commits."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import TENANT_KEY_SCOPES, Principal
from platform_core.auth import api_keys as key_format
from platform_core.auth.tokens import token_digest
from platform_core.errors import InvalidRequest, NotFound
from platform_core.models import ApiKey, Tenant, TenantStatus, utcnow
from platform_core.settings import Settings
from tenant_api.api_keys.repository import ApiKeyRepository
from tenant_api.api_keys.schemas import ApiKeyCreate, ApiKeyOut
from tenant_api.kit.audit import AuditContext


def to_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.key_id,
        name=key.name,
        scopes=list(key.scopes),
        tenant_id=key.tenant_id,
        created_by=key.created_by,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


async def create_key(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    audit: AuditContext,
    body: ApiKeyCreate,
) -> tuple[ApiKey, str]:
    tenant_id = body.tenant_id
    if not principal.platform_wide:
        if tenant_id is not None and tenant_id != principal.tenant_id:
            raise NotFound(f"tenant {tenant_id} not found")
        tenant_id = principal.tenant_id
    if tenant_id is not None:
        tenant = await session.get(Tenant, tenant_id)
        if tenant is None or tenant.status is TenantStatus.DELETED:
            raise NotFound(f"tenant {tenant_id} not found")
    wanted = set(body.scopes)
    if not wanted <= principal.scopes:
        missing = ", ".join(sorted(s.value for s in wanted - principal.scopes))
        raise InvalidRequest(f"scopes: you cannot grant scopes you do not hold ({missing})")
    if tenant_id is not None and not wanted <= TENANT_KEY_SCOPES:
        extra = ", ".join(sorted(s.value for s in wanted - TENANT_KEY_SCOPES))
        raise InvalidRequest(f"scopes: a tenant-bound key cannot hold {extra}")
    generated = key_format.generate()
    key = ApiKey(
        key_id=generated.key_id,
        secret_hash=token_digest(settings.require_secret_key(), generated.full),
        name=body.name,
        scopes=sorted(s.value for s in wanted),
        tenant_id=tenant_id,
        created_by=principal.actor,
    )
    session.add(key)
    await session.flush()
    audit.record(
        "api_key.create",
        "api_key",
        key.key_id,
        tenant_id=key.tenant_id,
        details={"scopes": key.scopes, "name": key.name},
    )
    return key, generated.full


async def revoke_key(
    session: AsyncSession, principal: Principal, audit: AuditContext, key_id: str
) -> ApiKey:
    key = await ApiKeyRepository(session, principal).get_visible(key_id)
    if key is None:
        raise NotFound(f"API key {key_id} not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    audit.record("api_key.revoke", "api_key", key.key_id, tenant_id=key.tenant_id)
    return key
