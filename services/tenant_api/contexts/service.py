"""Contexts: a Matrix room on the tenant's homeserver bound to the tenant's own reference,
created and run by the platform's application service user; tenant users and room-only
external participants in it; closing; back-office messages (billed like any message)."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core import appservice, usage_batch
from platform_core.auth import Principal
from platform_core.crypto import SecretBox
from platform_core.errors import Conflict, InvalidRequest, NotFound
from platform_core.models import (
    Context,
    ContextEvent,
    ContextEventKind,
    ContextParticipant,
    ContextState,
    Homeserver,
    Meter,
    ParticipantKind,
    ParticipantState,
    Tenant,
    utcnow,
)
from platform_core.redis import async_client, keys_for
from platform_core.settings import Settings
from platform_core.synapse_admin import PLATFORM_ADMIN_LOCALPART, SynapseAdminClient
from tenant_api.contexts import matrix
from tenant_api.contexts.repository import ContextRepository
from tenant_api.contexts.schemas import (
    ContextOut,
    ContextPut,
    Credential,
    MessageOut,
    ParticipantCreated,
    ParticipantIn,
    ParticipantOut,
)
from tenant_api.kit.audit import AuditContext
from tenant_api.tenants.repository import TenantRepository
from tenant_api.users.schemas import LOCALPART_RE


@dataclass
class Scope:
    """One request's view: the tenant (visible to the principal), its homeserver, the
    contexts repository and the secrets box."""

    tenant: Tenant
    homeserver: Homeserver | None
    contexts: ContextRepository
    box: SecretBox
    settings: Settings


async def scope_of(
    tenant_id: uuid.UUID,
    session: AsyncSession,
    principal: Principal,
    settings: Settings,
    *,
    lock: bool = False,
) -> Scope:
    """404 unless the principal sees the tenant. ``lock``: serialize with other writers of
    this tenant's contexts until commit (same ref twice at once → one room)."""
    tenants = TenantRepository(session, principal)
    tenant = await tenants.get_or_404(tenant_id, for_update=lock)
    return Scope(
        tenant,
        await tenants.get_homeserver(tenant_id),
        ContextRepository(session, principal),
        SecretBox(settings.require_secret_key()),
        settings,
    )


async def context_or_404(scope: Scope, ref: str) -> Context:
    context = await scope.contexts.get_by_ref(scope.tenant.id, ref)
    if context is None:
        raise NotFound(f"context {ref} not found")
    return context


def participant_out(participant: ContextParticipant) -> ParticipantOut:
    return ParticipantOut(
        id=participant.id,
        kind=participant.kind.value,
        user_id=participant.user_id,
        display_name=participant.display_name,
        status=participant.status.value,
        expires_at=participant.expires_at,
        joined_at=participant.joined_at,
    )


def context_out(context: Context, participants: list[ContextParticipant]) -> ContextOut:
    return ContextOut(
        id=context.id,
        ref=context.ref,
        title=context.title,
        metadata=context.context_metadata or {},
        room_id=context.room_id,
        status=context.status.value,
        message_count=context.message_count,
        last_activity_at=context.last_activity_at,
        created_at=context.created_at,
        closed_at=context.closed_at,
        participants=[participant_out(p) for p in participants],
    )


async def contexts_out(scope: Scope, contexts: list[Context]) -> list[ContextOut]:
    participants = await scope.contexts.participants([c.id for c in contexts])
    by_context: dict[uuid.UUID, list[ContextParticipant]] = {c.id: [] for c in contexts}
    for participant in participants:
        by_context[participant.context_id].append(participant)
    return [context_out(c, by_context[c.id]) for c in contexts]


# Create or return ----------------------------------------------------------------------


async def put_context(
    scope: Scope, ref: str, body: ContextPut, audit: AuditContext
) -> tuple[ContextOut, bool]:
    """The context of ``ref``: created (True) with its room and tenant users, or the existing
    one (False) unchanged — the same reference always names the same room."""
    existing = await scope.contexts.get_by_ref(scope.tenant.id, ref)
    if existing is not None:
        return (await contexts_out(scope, [existing]))[0], False
    user_ids = list(dict.fromkeys(_tenant_user_id(scope.tenant, p.user) for p in body.participants))
    async with matrix.clients(scope.tenant, scope.homeserver, scope.box) as (service, admin):
        for user_id in user_ids:  # before the room exists: a typo leaves no room behind
            await _require_active_user(admin, user_id)
        room_id = await service.create_context_room(
            ref=ref, title=body.title, metadata=body.metadata
        )
        context = Context(
            tenant_id=scope.tenant.id,
            ref=ref,
            title=body.title,
            context_metadata=body.metadata,
            room_id=room_id,
            status=ContextState.OPEN,
        )
        try:
            await scope.contexts.add(context)
        except IntegrityError:
            # Only where the tenant row lock does not serialize (SQLite): another request
            # created this ref meanwhile. Its room is the context's; this one stays unused.
            raise Conflict(f"context {ref} was created meanwhile; repeat the request") from None
        for user_id in user_ids:
            await _add_tenant_user(scope, context, service, admin, user_id)
    audit.record(
        "context.create", "context", context.id, tenant_id=scope.tenant.id, details={"ref": ref}
    )
    return (await contexts_out(scope, [context]))[0], True


# Participants --------------------------------------------------------------------------


def _tenant_user_id(tenant: Tenant, user: str) -> str:
    """``alice`` or ``@alice:<server>`` → the full id of a tenant user (never the platform's
    own accounts or an external participant)."""
    suffix = f":{tenant.server_name}"
    localpart = user[1:].removesuffix(suffix) if user.startswith("@") else user
    if user.startswith("@") and not user.endswith(suffix):
        raise InvalidRequest(f"user: {user} is not a user of this tenant's homeserver")
    reserved = localpart in {PLATFORM_ADMIN_LOCALPART, appservice.SERVICE_LOCALPART}
    if not LOCALPART_RE.fullmatch(localpart) or reserved:
        raise InvalidRequest(f"user: {user} is not a tenant user name")
    if localpart.startswith(appservice.EXTERNAL_LOCALPART_PREFIX):
        raise InvalidRequest("user: external participants are added with display_name")
    return f"@{localpart}{suffix}"


async def _require_active_user(admin: SynapseAdminClient, user_id: str) -> None:
    found = await admin.get_user(user_id)
    if found is None or found.get("deactivated"):
        raise InvalidRequest(f"user: {user_id} is not an active user of this homeserver")


async def _add_tenant_user(
    scope: Scope,
    context: Context,
    service: matrix.ServiceUserClient,
    admin: SynapseAdminClient,
    user_id: str,
) -> ContextParticipant:
    existing = await scope.contexts.participant_by_user(context, user_id)
    if existing is not None and existing.status is ParticipantState.ACTIVE:
        return existing
    await _require_active_user(admin, user_id)
    await service.invite(context.room_id, user_id)
    await matrix.tenant_user_join(admin, service.base_url, context.room_id, user_id)
    participant = existing or ContextParticipant(
        context_id=context.id,
        tenant_id=scope.tenant.id,
        kind=ParticipantKind.TENANT_USER,
        user_id=user_id,
    )
    participant.status = ParticipantState.ACTIVE
    participant.joined_at = utcnow()
    if existing is None:
        await scope.contexts.add(participant)
    return participant


def _ttl(settings: Settings, ttl_s: int | None) -> timedelta:
    ttl = settings.contexts_external_ttl_default_s if ttl_s is None else ttl_s
    if ttl > settings.contexts_external_ttl_max_s:
        raise InvalidRequest(
            f"ttl_s: at most {settings.contexts_external_ttl_max_s} seconds on this platform"
        )
    return timedelta(seconds=ttl)


async def _add_external(
    scope: Scope,
    context: Context,
    service: matrix.ServiceUserClient,
    admin: SynapseAdminClient,
    body: ParticipantIn,
    ttl: timedelta,
) -> ParticipantCreated:
    expires_at = (utcnow() + ttl).replace(microsecond=0)
    localpart = appservice.EXTERNAL_LOCALPART_PREFIX + secrets.token_hex(10)
    user_id = await service.register_external(localpart)
    participant = ContextParticipant(
        context_id=context.id,
        tenant_id=scope.tenant.id,
        kind=ParticipantKind.EXTERNAL,
        user_id=user_id,
        display_name=body.display_name,
        status=ParticipantState.ACTIVE,
        expires_at=expires_at,
    )
    # Recorded before anything else can fail: the sweep cuts off an account a failed request
    # left behind once its (short) time is up.
    await scope.contexts.add(participant)
    await service.set_displayname(user_id, str(body.display_name))
    await service.invite(context.room_id, user_id)
    await service.join_as(context.room_id, user_id)
    participant.joined_at = utcnow()
    # The homeserver refuses this token after expires_at by itself; the sweep then
    # deactivates the account.
    token = await admin.login_as(user_id, valid_until_ms=int(expires_at.timestamp() * 1000))
    participant.credential_encrypted = scope.box.encrypt(token)
    # The proxy's confinement learns the participant's room (media of other rooms refused).
    keys = keys_for(scope.settings)
    lifetime_s = int((expires_at - utcnow()).total_seconds()) + 60
    await async_client(scope.settings).set(
        keys.context_external(appservice.token_digest(token)),
        f"{user_id} {context.room_id}",
        ex=max(lifetime_s, 60),
    )
    credential = Credential(
        access_token=token,
        user_id=user_id,
        device_id=None,
        homeserver_url=scope.settings.homeserver_url(scope.tenant.server_name),
        homeserver_path_url=f"{scope.settings.effective_proxy_public_url}/t/{scope.tenant.slug}",
        room_id=context.room_id,
        expires_at=expires_at,
    )
    return ParticipantCreated(**participant_out(participant).model_dump(), credential=credential)


async def add_participant(
    scope: Scope, ref: str, body: ParticipantIn, audit: AuditContext
) -> ParticipantCreated:
    context = await context_or_404(scope, ref)
    if context.status is not ContextState.OPEN:
        raise Conflict(f"context {ref} is closed")
    # Checked before the homeserver is asked anything.
    user_id = _tenant_user_id(scope.tenant, body.user) if body.user is not None else None
    ttl = _ttl(scope.settings, body.ttl_s)
    async with matrix.clients(scope.tenant, scope.homeserver, scope.box) as (service, admin):
        if user_id is not None:
            added = await _add_tenant_user(scope, context, service, admin, user_id)
            created = ParticipantCreated(**participant_out(added).model_dump())
        else:
            created = await _add_external(scope, context, service, admin, body, ttl)
    audit.record(
        "context.participant_add",
        "context",
        context.id,
        tenant_id=scope.tenant.id,
        details={"participant": str(created.id), "kind": created.kind},
    )
    return created


async def _cut_off(
    scope: Scope, admin: SynapseAdminClient, participant: ContextParticipant
) -> None:
    token = (
        scope.box.decrypt(participant.credential_encrypted)
        if participant.credential_encrypted
        else None
    )
    await matrix.cut_off_external(admin, admin_base_url(scope), participant.user_id, token)
    participant.credential_encrypted = None
    participant.cut_off_at = utcnow()


def admin_base_url(scope: Scope) -> str:
    return str(scope.homeserver.upstream_url if scope.homeserver else "")


async def remove_participant(
    scope: Scope, ref: str, participant_id: uuid.UUID, audit: AuditContext
) -> ParticipantOut:
    context = await context_or_404(scope, ref)
    participant = await scope.contexts.participant(context, participant_id)
    if participant is None:
        raise NotFound(f"participant {participant_id} not found in context {ref}")
    if participant.status is ParticipantState.ACTIVE:
        participant.status = ParticipantState.REMOVED
        async with matrix.clients(scope.tenant, scope.homeserver, scope.box) as (service, admin):
            if participant.kind is ParticipantKind.EXTERNAL:
                await _cut_off(scope, admin, participant)
            elif context.status is ContextState.OPEN:
                await service.kick(context.room_id, participant.user_id, "removed from the context")
        audit.record(
            "context.participant_remove",
            "context",
            context.id,
            tenant_id=scope.tenant.id,
            details={"participant": str(participant.id)},
        )
    return participant_out(participant)


# Close and messages --------------------------------------------------------------------


async def close_context(scope: Scope, ref: str, audit: AuditContext) -> ContextOut:
    """Read-only for everyone, history kept, every external participant cut off. Closing a
    closed context changes nothing."""
    context = await context_or_404(scope, ref)
    participants = await scope.contexts.participants([context.id])
    if context.status is ContextState.CLOSED:
        return context_out(context, participants)
    async with matrix.clients(scope.tenant, scope.homeserver, scope.box) as (service, admin):
        await service.make_read_only(context.room_id)
        context.status = ContextState.CLOSED
        context.closed_at = utcnow()
        for participant in participants:
            if participant.status is ParticipantState.ACTIVE:
                participant.status = ParticipantState.CLOSED
            if participant.kind is ParticipantKind.EXTERNAL and participant.cut_off_at is None:
                await _cut_off(scope, admin, participant)
    await scope.contexts.add(
        ContextEvent(
            tenant_id=scope.tenant.id,
            context_id=context.id,
            kind=ContextEventKind.CLOSED.value,
            natural_id=f"closed:{context.id}",
            payload={"ref": context.ref, "room_id": context.room_id},
            occurred_at=context.closed_at,
        )
    )
    audit.record("context.close", "context", context.id, tenant_id=scope.tenant.id)
    return context_out(context, participants)


async def post_message(scope: Scope, ref: str, body: str, audit: AuditContext) -> MessageOut:
    """Post as the service user; billed like a message a client sent through the proxy (the
    usage stream, counted once by its event id)."""
    context = await context_or_404(scope, ref)
    if context.status is not ContextState.OPEN:
        raise Conflict(f"context {ref} is closed; it is read-only")
    async with matrix.clients(scope.tenant, scope.homeserver, scope.box) as (service, _admin):
        event_id = await service.send_text(context.room_id, body)
    await record_billed_message(scope.settings, scope.tenant.id, event_id)
    audit.record(
        "context.message",
        "context",
        context.id,
        tenant_id=scope.tenant.id,
        details={"event_id": event_id},
    )
    return MessageOut(event_id=event_id, room_id=context.room_id)


async def record_billed_message(settings: Settings, tenant_id: uuid.UUID, event_id: str) -> None:
    """One usage batch with the message's event id as natural id, under a batch id derived
    from it: a retried write is dropped by the consumer's batch-id check, and the event id
    is counted once whatever else reports it."""
    now = time.time()
    batch = usage_batch.new_batch(
        now, usage=[], events=[(str(tenant_id), Meter.MESSAGES.value, event_id, 1, now)]
    )
    keys = keys_for(settings)
    await async_client(settings).xadd(
        keys.usage_stream,
        {
            "batch_id": "ctxmsg:" + hashlib.sha256(event_id.encode()).hexdigest()[:48],
            "source": "tenant-api/contexts",
            "payload": usage_batch.encode(batch),
        },
    )
