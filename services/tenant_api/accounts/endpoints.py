"""/v1/accounts (operators create operators and tenant admins; operators and tenant admins
disable, enable and reset accounts) and /v1/auth (sign-in)."""

from __future__ import annotations

import functools
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, status
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import Principal
from platform_core.errors import InvalidRequest, NotFound, Unauthorized
from platform_core.models import Account
from platform_core.settings import Settings
from tenant_api.accounts import service
from tenant_api.accounts.schemas import AccountCreate, AccountOut, PasswordReset
from tenant_api.deps import AccountsManage, AccountsWrite, AuditDep, SessionDep, SettingsDep
from tenant_api.kit import tasks
from tenant_api.kit.audit import AuditContext, request_id
from tenant_api.kit.session import keep_on_error
from tenant_api.throttle import Throttle, client_address

router = APIRouter(tags=["auth"])

_TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: {"description": "Failure budget spent (see Retry-After)"}
}


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str


@router.post(
    "/v1/accounts",
    status_code=status.HTTP_201_CREATED,
    response_model=AccountOut,
    name="accounts.create",
)
async def create_account(
    body: AccountCreate,
    session: SessionDep,
    settings: SettingsDep,
    principal: AccountsWrite,
    audit: AuditDep,
) -> AccountOut:
    account = await service.create_account(session, settings, audit, body)
    return AccountOut.model_validate(account, from_attributes=True)


async def _manageable(
    session: AsyncSession, principal: Principal, account_id: uuid.UUID
) -> Account:
    account = await service.manageable_account(session, principal, account_id)
    if account is None:
        raise NotFound(f"no account {account_id}")
    return account


@router.get("/v1/accounts/{account_id}", response_model=AccountOut, name="accounts.get")
async def get_account(
    account_id: uuid.UUID, session: SessionDep, principal: AccountsManage
) -> AccountOut:
    account = await _manageable(session, principal, account_id)
    return AccountOut.model_validate(account, from_attributes=True)


@router.post(
    "/v1/accounts/{account_id}/disable", response_model=AccountOut, name="accounts.disable"
)
async def disable_account(
    account_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: AccountsManage,
    audit: AuditDep,
) -> AccountOut:
    """The account can no longer sign in; every refresh token is revoked and its access tokens
    stop working at once. Idempotent."""
    account = await _manageable(session, principal, account_id)
    await service.disable(session, principal, audit, account)
    # After commit: from here on no new token can be issued, so every older one is ended.
    throttle = Throttle.for_settings(settings)
    tasks.after_commit(session, functools.partial(throttle.revoke_sessions, str(account.id)))
    return AccountOut.model_validate(account, from_attributes=True)


@router.post("/v1/accounts/{account_id}/enable", response_model=AccountOut, name="accounts.enable")
async def enable_account(
    account_id: uuid.UUID, session: SessionDep, principal: AccountsManage, audit: AuditDep
) -> AccountOut:
    """The account can sign in again (sessions ended by the disable stay ended)."""
    account = await _manageable(session, principal, account_id)
    await service.enable(session, audit, account)
    return AccountOut.model_validate(account, from_attributes=True)


@router.post(
    "/v1/accounts/{account_id}/reset-password",
    response_model=AccountOut,
    name="accounts.reset_password",
)
async def reset_password(
    account_id: uuid.UUID,
    body: PasswordReset,
    session: SessionDep,
    settings: SettingsDep,
    principal: AccountsManage,
    audit: AuditDep,
) -> AccountOut:
    """Set a new password and end every session of the account (refresh tokens revoked,
    access tokens refused at once). Also lifts a sign-in lockout of the account."""
    account = await _manageable(session, principal, account_id)
    await service.reset_password(session, settings, audit, account, body.password)
    throttle = Throttle.for_settings(settings)
    tasks.after_commit(session, functools.partial(throttle.revoke_sessions, str(account.id)))
    tasks.after_commit(session, functools.partial(throttle.forget_signin_failures, account.email))
    return AccountOut.model_validate(account, from_attributes=True)


@router.post("/v1/auth/token", response_model=TokenOut, responses=_TOO_MANY, name="auth.token")
async def token(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    grant_type: Annotated[str, Form(pattern="^(password|refresh_token)$")],
    username: Annotated[str | None, Form(max_length=254)] = None,
    password: Annotated[str | None, Form(max_length=1024)] = None,
    refresh_token: Annotated[str | None, Form(max_length=200)] = None,
) -> TokenOut:
    """OAuth2 password flow (`username` = email) or `refresh_token` rotation. The access token
    lives 15 minutes; each refresh token works once and is replaced by a new one.

    Failed attempts are budgeted per account and per client address: once spent, the answer is
    429 with `Retry-After` (even for the right password) until the window ends."""
    throttle = Throttle.for_settings(settings)
    address = client_address(request)
    if grant_type == "password":
        if not username or not password:
            raise InvalidRequest("username and password are required for grant_type=password")
        issued = await _password_grant(
            request, session, settings, throttle, address, username, password
        )
    else:
        if not refresh_token:
            raise InvalidRequest("refresh_token is required for grant_type=refresh_token")
        await throttle.ensure_address_allowed(address)
        try:
            issued = await service.refresh_grant(session, settings, refresh_token)
        except service.RefreshReuse:
            keep_on_error(session)  # the family stays revoked
            await throttle.count_address_failure(address)
            raise
        except Unauthorized:
            await throttle.count_address_failure(address)
            raise
    return TokenOut(
        access_token=issued.access_token,
        expires_in=issued.expires_in,
        refresh_token=issued.refresh_token,
    )


async def _password_grant(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    throttle: Throttle,
    address: str,
    username: str,
    password: str,
) -> service.IssuedTokens:
    email = username.strip().lower()
    # Before any hashing: a throttled attempt costs one Redis round trip, nothing more.
    await throttle.ensure_signin_allowed(address, email)
    try:
        issued = await service.password_grant(session, settings, email, password)
    except Unauthorized:
        if await throttle.count_signin_failure(address, email):
            # An anonymous attempt: the audit log names it by its client address.
            audit = AuditContext(session, f"address:{address}", request_id(request))
            await service.record_lockout(session, settings, audit, address, email)
        raise
    await throttle.forget_signin_failures(email)
    return issued


@router.post("/v1/auth/revoke", status_code=status.HTTP_200_OK, name="auth.revoke")
async def revoke(
    session: SessionDep,
    settings: SettingsDep,
    token: Annotated[str, Form(max_length=200)],
) -> dict[str, str]:
    """Revoke a refresh token and every token of its sign-in (RFC 7009: unknown tokens are
    not an error)."""
    await service.revoke(session, settings, token)
    return {}
