"""/v1/tenants/{id}/registration-tokens: who may sign up on a homeserver whose registration
policy is 'token' (PATCH /v1/tenants/{id} sets the policy)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from tenant_api.deps import AuditDep, SessionDep, SettingsDep, UsersWrite
from tenant_api.registration_tokens import service
from tenant_api.registration_tokens.schemas import (
    RegistrationTokenCreate,
    RegistrationTokenList,
    RegistrationTokenOut,
)
from tenant_api.users.service import homeserver_of

router = APIRouter(
    prefix="/v1/tenants/{tenant_id}/registration-tokens", tags=["registration tokens"]
)

Token = Annotated[str, Path(max_length=64, description="The registration token")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=RegistrationTokenOut,
    name="registration_tokens.create",
)
async def create_registration_token(
    tenant_id: uuid.UUID,
    body: RegistrationTokenCreate,
    session: SessionDep,
    principal: UsersWrite,
    settings: SettingsDep,
    audit: AuditDep,
) -> RegistrationTokenOut:
    """Create a token people sign up with (Matrix clients ask for it when registration is
    'token'). The answer carries the token: hand it out, it is a credential."""
    tenant, homeserver, box = await homeserver_of(tenant_id, session, principal, settings)
    return await service.create_token(tenant, homeserver, box, audit, body)


@router.get("", response_model=RegistrationTokenList, name="registration_tokens.list")
async def list_registration_tokens(
    tenant_id: uuid.UUID,
    session: SessionDep,
    principal: UsersWrite,
    settings: SettingsDep,
    valid: Annotated[
        bool | None,
        Query(description="true: only usable tokens; false: only used-up or expired ones"),
    ] = None,
) -> RegistrationTokenList:
    """The homeserver's tokens with their use counts. Needs `users:write`: whoever can read
    the tokens can create accounts."""
    tenant, homeserver, box = await homeserver_of(tenant_id, session, principal, settings)
    return await service.list_tokens(tenant, homeserver, box, valid=valid)


@router.delete(
    "/{token}", status_code=status.HTTP_204_NO_CONTENT, name="registration_tokens.delete"
)
async def delete_registration_token(
    tenant_id: uuid.UUID,
    token: Token,
    session: SessionDep,
    principal: UsersWrite,
    settings: SettingsDep,
    audit: AuditDep,
) -> Response:
    """Revoke a token at once; accounts already created with it stay."""
    tenant, homeserver, box = await homeserver_of(tenant_id, session, principal, settings)
    await service.delete_token(tenant, homeserver, box, audit, token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
