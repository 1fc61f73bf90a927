"""Account rules: creation (operators only), sign-in with rotating refresh tokens, disabling,
enabling and password resets (operators; tenant admins for their own tenant's admins)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import Principal, PrincipalKind
from platform_core.auth.passwords import (
    hash_password_off_loop,
    needs_rehash,
    verify_password_off_loop,
)
from platform_core.auth.tokens import issue_access_token, token_digest
from platform_core.errors import Conflict, InvalidRequest, Unauthorized
from platform_core.models import Account, AccountRole, RefreshToken, Tenant, TenantStatus, utcnow
from platform_core.settings import Settings
from tenant_api.accounts.repository import AccountRepository
from tenant_api.accounts.schemas import AccountCreate
from tenant_api.kit.audit import AuditContext
from tenant_api.kit.session import keep_on_error

REFRESH_PREFIX = "c3r_"


@dataclass
class IssuedTokens:
    access_token: str
    expires_in: int
    refresh_token: str


async def create_account(
    session: AsyncSession, settings: Settings, audit: AuditContext, body: AccountCreate
) -> Account:
    if body.tenant_id is not None:
        tenant = await session.get(Tenant, body.tenant_id)
        if tenant is None or tenant.status is TenantStatus.DELETED:
            raise InvalidRequest(f"tenant_id: no tenant {body.tenant_id}")
    if await AccountRepository(session).by_email(body.email) is not None:
        raise Conflict("an account with this email exists")
    account = Account(
        email=body.email,
        password_hash=await hash_password_off_loop(settings, body.password),
        role=body.role.value,
        tenant_id=body.tenant_id,
    )
    session.add(account)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict("an account with this email exists") from exc
    audit.record(
        "account.create",
        "account",
        account.id,
        tenant_id=account.tenant_id,
        details={"role": account.role},
    )
    return account


async def _issue(
    session: AsyncSession, settings: Settings, account: Account, family_id: uuid.UUID
) -> IssuedTokens:
    access, ttl = issue_access_token(
        settings,
        subject=str(account.id),
        role=account.role,
        tenant_id=str(account.tenant_id) if account.tenant_id else None,
    )
    refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            account_id=account.id,
            family_id=family_id,
            token_hash=token_digest(settings.require_secret_key(), refresh),
            expires_at=utcnow() + timedelta(seconds=settings.refresh_token_ttl_s),
        )
    )
    await session.flush()
    return IssuedTokens(access, ttl, refresh)


async def _usable(session: AsyncSession, account: Account | None) -> Account:
    if account is None or account.disabled_at is not None:
        raise Unauthorized("invalid credentials")
    if account.role == AccountRole.TENANT_ADMIN.value:
        tenant = await session.get(Tenant, account.tenant_id)
        if tenant is None or tenant.status is TenantStatus.DELETED:
            raise Unauthorized("invalid credentials")
    return account


async def password_grant(
    session: AsyncSession, settings: Settings, email: str, password: str
) -> IssuedTokens:
    account = await AccountRepository(session).by_email(email.strip().lower())
    password_hash = account.password_hash if account else None
    if not await verify_password_off_loop(settings, password_hash, password):
        raise Unauthorized("invalid credentials")
    account = await _usable(session, account)
    if needs_rehash(account.password_hash):
        account.password_hash = await hash_password_off_loop(settings, password)
    return await _issue(session, settings, account, uuid.uuid4())


class RefreshReuse(Unauthorized):
    """A used refresh token came back: the family is revoked (caller must commit that)."""


async def refresh_grant(session: AsyncSession, settings: Settings, token: str) -> IssuedTokens:
    stored = await AccountRepository(session).refresh_token(
        token_digest(settings.require_secret_key(), token)
    )
    now = utcnow()
    if stored is None or stored.revoked_at is not None:
        raise Unauthorized("invalid refresh token")
    if stored.used_at is not None:
        await AccountRepository(session).revoke_family(stored.family_id, now)
        raise RefreshReuse("refresh token already used: every token of this sign-in is revoked")
    if stored.expires_at <= now:
        raise Unauthorized("refresh token expired")
    stored.used_at = now
    account = await _usable(session, await AccountRepository(session).get(stored.account_id))
    return await _issue(session, settings, account, stored.family_id)


async def revoke(session: AsyncSession, settings: Settings, token: str) -> None:
    stored = await AccountRepository(session).refresh_token(
        token_digest(settings.require_secret_key(), token)
    )
    if stored is not None:
        await AccountRepository(session).revoke_family(stored.family_id, utcnow())


async def manageable_account(
    session: AsyncSession, principal: Principal, account_id: uuid.UUID
) -> Account | None:
    """The account if ``principal`` may manage it: operators (and operator-organisation keys)
    any account, a tenant's admins and keys only that tenant's admin accounts. None otherwise
    (the caller answers 404: other tenants' accounts and operators are not revealed)."""
    account = await AccountRepository(session).get(account_id)
    if account is None or principal.platform_wide:
        return account
    if account.role == AccountRole.TENANT_ADMIN.value and account.tenant_id == principal.tenant_id:
        return account
    return None


def _is_self(principal: Principal, account: Account) -> bool:
    return principal.kind is not PrincipalKind.API_KEY and principal.subject == str(account.id)


async def disable(
    session: AsyncSession, principal: Principal, audit: AuditContext, account: Account
) -> None:
    """No more sign-ins, every refresh token revoked; the caller ends the access tokens after
    commit (``Throttle.revoke_sessions``)."""
    if _is_self(principal, account):
        raise Conflict("you cannot disable your own account; ask another administrator")
    now = utcnow()
    if account.disabled_at is None:
        account.disabled_at = now
    await AccountRepository(session).revoke_all_refresh_tokens(account.id, now)
    await session.flush()
    _record(audit, "account.disable", account)


async def enable(session: AsyncSession, audit: AuditContext, account: Account) -> None:
    """Sign-in works again; sessions ended by the disable stay ended."""
    account.disabled_at = None
    await session.flush()
    _record(audit, "account.enable", account)


async def reset_password(
    session: AsyncSession, settings: Settings, audit: AuditContext, account: Account, password: str
) -> None:
    """A new password and every session ended (refresh tokens here; access tokens by the
    caller after commit)."""
    account.password_hash = await hash_password_off_loop(settings, password)
    await AccountRepository(session).revoke_all_refresh_tokens(account.id, utcnow())
    await session.flush()
    _record(audit, "account.reset_password", account)


def _record(audit: AuditContext, action: str, account: Account) -> None:
    audit.record(
        action,
        "account",
        account.id,
        tenant_id=account.tenant_id,
        details={"email": account.email, "role": account.role},
    )


async def record_lockout(
    session: AsyncSession, settings: Settings, audit: AuditContext, address: str, email: str
) -> None:
    """One audit event per lockout of an existing account (unknown emails leave none); the
    attempt's own writes are dropped, the event stays although the answer is an error."""
    await session.rollback()
    account = await AccountRepository(session).by_email(email)
    if account is None:
        return
    audit.record(
        "account.throttle",
        "account",
        account.id,
        tenant_id=account.tenant_id,
        details={
            "failures": settings.signin_account_max_failures,
            "locked_for_s": settings.signin_account_window_s,
            "client_address": address,
        },
    )
    keep_on_error(session)
