"""/v1/tenants/{id}/contexts: rooms bound to the tenant's own references, their participants
(tenant users and room-only external participants), closing, back-office messages."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import AfterValidator

from platform_core.models import ContextState
from tenant_api.contexts import service
from tenant_api.contexts.schemas import (
    REF_RULE,
    ContextOut,
    ContextPage,
    ContextPut,
    MessageIn,
    MessageOut,
    ParticipantCreated,
    ParticipantIn,
    ParticipantOut,
    check_ref,
)
from tenant_api.deps import AuditDep, SessionDep, SettingsDep, TenantsRead, UsersWrite
from tenant_api.kit.pagination import decode_cursor, encode_cursor

router = APIRouter(prefix="/v1/tenants/{tenant_id}/contexts", tags=["contexts"])

Ref = Annotated[
    str,
    Path(description=f"Your own reference, e.g. case-4711: {REF_RULE}"),
    AfterValidator(check_ref),
]


async def _readable(
    tenant_id: uuid.UUID, session: SessionDep, principal: TenantsRead, settings: SettingsDep
) -> service.Scope:
    return await service.scope_of(tenant_id, session, principal, settings)


async def _writable(
    tenant_id: uuid.UUID, session: SessionDep, principal: UsersWrite, settings: SettingsDep
) -> service.Scope:
    return await service.scope_of(tenant_id, session, principal, settings)


async def _locked(
    tenant_id: uuid.UUID, session: SessionDep, principal: UsersWrite, settings: SettingsDep
) -> service.Scope:
    """For writers that may create or close a room: serialized per tenant until commit."""
    return await service.scope_of(tenant_id, session, principal, settings, lock=True)


# The tenant's contexts as the principal may use them (404 unless it sees the tenant).
ReadScope = Annotated[service.Scope, Depends(_readable)]
WriteScope = Annotated[service.Scope, Depends(_writable)]
LockedScope = Annotated[service.Scope, Depends(_locked)]


@router.put(
    "/{ref}",
    response_model=ContextOut,
    responses={201: {"model": ContextOut, "description": "Created"}},
    name="contexts.put",
)
async def put_context(
    scope: LockedScope,
    ref: Ref,
    body: ContextPut,
    response: Response,
    audit: AuditDep,
) -> ContextOut:
    """Create the context of `ref` (201) or return the existing one unchanged (200): the same
    reference always names the same room."""
    out, created = await service.put_context(scope, ref, body, audit)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return out


@router.get("", response_model=ContextPage, name="contexts.list")
async def list_contexts(
    scope: ReadScope,
    ref: Annotated[str | None, Query(max_length=200)] = None,
    status_: Annotated[ContextState | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ContextPage:
    rows = await scope.contexts.page(
        scope.tenant.id,
        limit=limit + 1,
        after=decode_cursor(cursor) if cursor else None,
        ref=ref,
        status=status_,
    )
    page = rows[:limit]
    return ContextPage(
        items=await service.contexts_out(scope, page),
        next_cursor=encode_cursor(page[-1]) if len(rows) > limit else None,
    )


@router.get("/{ref}", response_model=ContextOut, name="contexts.get")
async def get_context(scope: ReadScope, ref: Ref) -> ContextOut:
    context = await service.context_or_404(scope, ref)
    return (await service.contexts_out(scope, [context]))[0]


@router.post(
    "/{ref}/participants",
    status_code=status.HTTP_201_CREATED,
    response_model=ParticipantCreated,
    name="context_participants.create",
)
async def add_participant(
    scope: WriteScope,
    ref: Ref,
    body: ParticipantIn,
    audit: AuditDep,
) -> ParticipantCreated:
    """A tenant user (`{"user": "alice"}`: invited and joined) or an external participant
    (`{"display_name": "…", "ttl_s": 3600}`): a room-only account made on the spot, and its
    `credential` (shown once) for an SDK or the widget to join at once."""
    return await service.add_participant(scope, ref, body, audit)


@router.delete(
    "/{ref}/participants/{participant_id}",
    response_model=ParticipantOut,
    name="context_participants.delete",
)
async def remove_participant(
    scope: WriteScope,
    ref: Ref,
    participant_id: uuid.UUID,
    audit: AuditDep,
) -> ParticipantOut:
    """Remove from the room; an external participant's account is deactivated (every token
    of it stops working)."""
    return await service.remove_participant(scope, ref, participant_id, audit)


@router.post("/{ref}/close", response_model=ContextOut, name="contexts.close")
async def close_context(
    scope: LockedScope,
    ref: Ref,
    audit: AuditDep,
) -> ContextOut:
    """The room becomes read-only for everyone, its history stays, every external participant
    is cut off. Closing again changes nothing."""
    return await service.close_context(scope, ref, audit)


@router.post(
    "/{ref}/messages",
    status_code=status.HTTP_201_CREATED,
    response_model=MessageOut,
    name="context_messages.create",
)
async def post_message(
    scope: WriteScope,
    ref: Ref,
    body: MessageIn,
    audit: AuditDep,
) -> MessageOut:
    """A back-office notice in the room (e.g. "document uploaded"), posted by the platform's
    service user and billed as a message."""
    return await service.post_message(scope, ref, body.body, audit)
