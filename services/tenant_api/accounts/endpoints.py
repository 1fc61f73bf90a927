"""/v1/accounts (operators create operators and tenant admins) and /v1/auth (sign-in)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, status
from pydantic import BaseModel

from platform_core.errors import InvalidRequest
from tenant_api.accounts import service
from tenant_api.accounts.schemas import AccountCreate, AccountOut
from tenant_api.audit.service import record
from tenant_api.deps import AccountsWrite, SessionDep, SettingsDep

router = APIRouter(tags=["auth"])


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str


@router.post("/v1/accounts", status_code=status.HTTP_201_CREATED, response_model=AccountOut)
async def create_account(
    body: AccountCreate, request: Request, session: SessionDep, principal: AccountsWrite
) -> AccountOut:
    account = await service.create_account(session, body)
    record(
        session,
        request,
        principal,
        "account.create",
        "account",
        account.id,
        tenant_id=account.tenant_id,
        details={"role": account.role},
    )
    await session.commit()
    return AccountOut.model_validate(account, from_attributes=True)


@router.post("/v1/auth/token", response_model=TokenOut)
async def token(
    session: SessionDep,
    settings: SettingsDep,
    grant_type: Annotated[str, Form(pattern="^(password|refresh_token)$")],
    username: Annotated[str | None, Form(max_length=254)] = None,
    password: Annotated[str | None, Form(max_length=1024)] = None,
    refresh_token: Annotated[str | None, Form(max_length=200)] = None,
) -> TokenOut:
    """OAuth2 password flow (`username` = email) or `refresh_token` rotation. The access token
    lives 15 minutes; each refresh token works once and is replaced by a new one."""
    try:
        if grant_type == "password":
            if not username or not password:
                raise InvalidRequest("username and password are required for grant_type=password")
            issued = await service.password_grant(session, settings, username, password)
        else:
            if not refresh_token:
                raise InvalidRequest("refresh_token is required for grant_type=refresh_token")
            issued = await service.refresh_grant(session, settings, refresh_token)
    except service.RefreshReuse:
        await session.commit()  # keep the family revoked
        raise
    await session.commit()
    return TokenOut(
        access_token=issued.access_token,
        expires_in=issued.expires_in,
        refresh_token=issued.refresh_token,
    )


@router.post("/v1/auth/revoke", status_code=status.HTTP_200_OK)
async def revoke(
    session: SessionDep,
    settings: SettingsDep,
    token: Annotated[str, Form(max_length=200)],
) -> dict[str, str]:
    """Revoke a refresh token and every token of its sign-in (RFC 7009: unknown tokens are
    not an error)."""
    await service.revoke(session, settings, token)
    await session.commit()
    return {}
