"""Typed request dependencies: settings, database session, the authenticated principal and
what each route requires of it."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import (
    TENANT_ADMIN_SCOPES,
    Principal,
    PrincipalKind,
    Scope,
    bearer_token,
    bootstrap_operator,
)
from platform_core.auth import api_keys as key_format
from platform_core.auth.tokens import token_digest, verify_access_token
from platform_core.errors import Forbidden, Unauthorized
from platform_core.models import AccountRole, utcnow
from platform_core.settings import Settings, get_settings
from tenant_api.api_keys.repository import ApiKeyRepository
from tenant_api.kit.audit import AuditContext, request_id
from tenant_api.kit.session import request_session
from tenant_api.throttle import Throttle, client_address

_LAST_USED_RESOLUTION = timedelta(minutes=1)  # no write per request for busy keys


def settings_dep() -> Settings:
    return get_settings()


SettingsDep = Annotated[Settings, Depends(settings_dep)]
# The request boundary (commit on success, rollback on error, tasks sent after commit).
SessionDep = Annotated[AsyncSession, Depends(request_session, scope="function")]


async def authenticate(
    token: str,
    settings: Settings,
    session: AsyncSession,
    throttle: Throttle,
    *,
    record_use: bool = True,
) -> Principal:
    """Bootstrap operator token, an API key, or an access JWT — in that order. Access tokens
    issued before their account's sessions were revoked (disabled, password reset) fail.
    ``record_use=False`` writes nothing (a key's last use is not recorded): for looking at who
    calls before deciding to serve them (the rate limit)."""
    bootstrap = bootstrap_operator(token, settings)
    if bootstrap is not None:
        return bootstrap
    if token.startswith(key_format.PREFIX):
        return await _api_key_principal(token, settings, session, record_use=record_use)
    claims = verify_access_token(token, settings)
    revoked_at_ms = await throttle.sessions_revoked_at_ms(claims.subject)
    if revoked_at_ms is not None and claims.issued_at_ms <= revoked_at_ms:
        raise Unauthorized("this session was ended (account disabled or password reset)")
    if claims.role == AccountRole.OPERATOR.value:
        return Principal(PrincipalKind.OPERATOR, claims.subject)
    if claims.role == AccountRole.TENANT_ADMIN.value and claims.tenant_id:
        return Principal(
            PrincipalKind.TENANT_ADMIN,
            claims.subject,
            tenant_id=uuid.UUID(claims.tenant_id),
            scopes=TENANT_ADMIN_SCOPES,
        )
    raise Unauthorized("invalid or expired token")


async def _api_key_principal(
    token: str, settings: Settings, session: AsyncSession, *, record_use: bool
) -> Principal:
    parsed = key_format.parse(token)
    if parsed is None:
        raise Unauthorized("invalid API key")
    key = await ApiKeyRepository(session).by_key_id(parsed.key_id)
    digest = token_digest(settings.require_secret_key(), parsed.full)
    if key is None or not hmac.compare_digest(key.secret_hash, digest):
        raise Unauthorized("invalid API key")
    if key.revoked_at is not None:
        raise Unauthorized("this API key was revoked")
    now = utcnow()
    if record_use and (key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION):
        await ApiKeyRepository(session).mark_used(key, now)
        # Its own unit of work, before the request's: a key's use is recorded even when the
        # call it authenticated is refused.
        await session.commit()
    scopes = frozenset(Scope(s) for s in key.scopes if s in Scope._value2member_map_)
    return Principal(PrincipalKind.API_KEY, key.key_id, tenant_id=key.tenant_id, scopes=scopes)


# The OpenAPI security scheme ("bearer") every authenticated operation declares, so Swagger UI
# offers Authorize and generated clients send the credential. It decides nothing: with
# auto_error off it never answers, and the raw header is read below, so a missing or malformed
# credential is refused exactly as before (401 problem+json, counted by the throttle).
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An access token from `POST /v1/auth/token`, an API key (`c3k_…`), or the "
    "bootstrap operator token, as `Authorization: Bearer <token>`.",
)


async def principal_dep(
    request: Request,
    settings: SettingsDep,
    session: SessionDep,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Principal:
    token = bearer_token(request.headers.get("authorization"))
    address = client_address(request)
    throttle = Throttle.for_settings(settings)
    # Spent budget: refused before the credential is even looked at (no guessing oracle).
    await throttle.ensure_address_allowed(address)
    try:
        principal = await authenticate(token, settings, session, throttle)
    except Unauthorized:
        await throttle.count_address_failure(address)
        raise
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(principal_dep)]


async def audit_context(
    request: Request, session: SessionDep, principal: PrincipalDep
) -> AuditContext:
    """The audit log's view of this request: its session, who acts and the request id."""
    return AuditContext(session, principal.actor, request_id(request))


# What services that change state record their audit events with.
AuditDep = Annotated[AuditContext, Depends(audit_context)]


def require(
    scope: Scope, *, platform_wide: bool = False
) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency: the caller must hold ``scope`` (and act platform-wide if asked). Objects
    of other tenants are hidden later, by the repositories' scoping (404, never 403)."""

    async def dependency(principal: PrincipalDep) -> Principal:
        if not principal.has(scope):
            raise Forbidden(f"this credential lacks the '{scope.value}' scope")
        if platform_wide and not principal.platform_wide:
            raise Forbidden("only operators (or operator-organisation keys) may do this")
        return principal

    dependency.__name__ = f"require_{scope.name.lower()}"
    return dependency


def _dep(scope: Scope, *, platform_wide: bool = False) -> Any:
    return Annotated[Principal, Depends(require(scope, platform_wide=platform_wide))]


TenantsRead = _dep(Scope.TENANTS_READ)
TenantsWrite = _dep(Scope.TENANTS_WRITE)
TenantsAdmin = _dep(Scope.TENANTS_WRITE, platform_wide=True)
# Operators reading what only they may see of a tenant (its homeserver's log).
TenantsOperatorRead = _dep(Scope.TENANTS_READ, platform_wide=True)
UsersWrite = _dep(Scope.USERS_WRITE)
UsageRead = _dep(Scope.USAGE_READ)
BillingRead = _dep(Scope.BILLING_READ)
BillingWrite = _dep(Scope.BILLING_WRITE, platform_wide=True)
PlansWrite = _dep(Scope.PLANS_WRITE, platform_wide=True)
KeysWrite = _dep(Scope.KEYS_WRITE)
AuditRead = _dep(Scope.AUDIT_READ)
AccountsWrite = _dep(Scope.ACCOUNTS_WRITE, platform_wide=True)
# Disable / enable / reset accounts: operators, and tenant admins for their own tenant's admins.
AccountsManage = _dep(Scope.ACCOUNTS_WRITE)
MetricsRead = _dep(Scope.METRICS_READ, platform_wide=True)
# Any authenticated principal (e.g. reading the plan catalogue).
Authenticated = PrincipalDep
