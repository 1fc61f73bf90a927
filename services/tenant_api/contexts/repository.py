"""All SQL of contexts: contexts and participants (scoped to the principal's tenants), the
application service receiver's rows, and the expiry sweep's (unscoped: the platform acts)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Select, or_, select

from platform_core.models import (
    AppserviceTransaction,
    Context,
    ContextEvent,
    ContextParticipant,
    ContextState,
    Homeserver,
    ParticipantKind,
    ParticipantState,
    Tenant,
)
from tenant_api.kit.repository import Repository, SyncRepository, keyset_page


class ContextRepository(Repository):
    def _contexts(self) -> Select:  # type: ignore[type-arg]
        return self.scoped(select(Context), Context.tenant_id)

    async def get_by_ref(self, tenant_id: uuid.UUID, ref: str) -> Context | None:
        statement = self._contexts().where(Context.tenant_id == tenant_id, Context.ref == ref)
        return (await self.session.scalars(statement)).one_or_none()

    async def page(
        self,
        tenant_id: uuid.UUID,
        *,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
        ref: str | None,
        status: ContextState | None,
    ) -> list[Context]:
        statement = self._contexts().where(Context.tenant_id == tenant_id)
        if ref is not None:
            statement = statement.where(Context.ref == ref)
        if status is not None:
            statement = statement.where(Context.status == status)
        statement = keyset_page(statement, Context, after, limit)
        return list((await self.session.scalars(statement)).all())

    async def add(self, row: Context | ContextParticipant | ContextEvent) -> None:
        self.session.add(row)
        await self.session.flush()

    async def participants(self, context_ids: list[uuid.UUID]) -> list[ContextParticipant]:
        if not context_ids:
            return []
        statement = (
            select(ContextParticipant)
            .where(ContextParticipant.context_id.in_(context_ids))
            .order_by(ContextParticipant.created_at, ContextParticipant.id)
        )
        return list((await self.session.scalars(statement)).all())

    async def participant(
        self, context: Context, participant_id: uuid.UUID
    ) -> ContextParticipant | None:
        statement = select(ContextParticipant).where(
            ContextParticipant.context_id == context.id, ContextParticipant.id == participant_id
        )
        return (await self.session.scalars(statement)).one_or_none()

    async def participant_by_user(
        self, context: Context, user_id: str
    ) -> ContextParticipant | None:
        statement = select(ContextParticipant).where(
            ContextParticipant.context_id == context.id, ContextParticipant.user_id == user_id
        )
        return (await self.session.scalars(statement)).one_or_none()


class AppserviceRepository(Repository):
    """The receiver's rows. Unscoped: the homeserver authenticates with its hs_token, not as
    a principal."""

    async def homeserver(self, tenant_id: uuid.UUID) -> tuple[Tenant, Homeserver] | None:
        """The tenant and its homeserver, the tenant row held FOR KEY SHARE first: a context
        being created or closed (which holds the tenant row) is committed before this
        transaction reads any context, and the two never wait for each other in a cycle."""
        statement = (
            select(Tenant, Homeserver)
            .join(Homeserver, Homeserver.tenant_id == Tenant.id)
            .where(Tenant.id == tenant_id)
            .with_for_update(of=Tenant, read=True, key_share=True)
        )
        row = (await self.session.execute(statement)).one_or_none()
        return (row[0], row[1]) if row is not None else None

    async def seen_transaction(self, tenant_id: uuid.UUID, txn_id: str) -> bool:
        found = await self.session.get(AppserviceTransaction, (tenant_id, txn_id))
        return found is not None

    async def add_transaction(self, tenant_id: uuid.UUID, txn_id: str, events: int) -> None:
        self.session.add(AppserviceTransaction(tenant_id=tenant_id, txn_id=txn_id, events=events))
        await self.session.flush()

    async def contexts_by_room(
        self, tenant_id: uuid.UUID, room_ids: set[str]
    ) -> dict[str, Context]:
        if not room_ids:
            return {}
        statement = (
            select(Context)
            .where(Context.tenant_id == tenant_id, Context.room_id.in_(room_ids))
            .with_for_update()
        )
        return {c.room_id: c for c in (await self.session.scalars(statement)).all()}

    async def outbox_has(self, tenant_id: uuid.UUID, natural_id: str) -> bool:
        statement = select(ContextEvent.id).where(
            ContextEvent.tenant_id == tenant_id, ContextEvent.natural_id == natural_id
        )
        return (await self.session.scalars(statement)).first() is not None

    async def add_event(self, event: ContextEvent) -> None:
        self.session.add(event)
        await self.session.flush()

    async def participant_by_user(
        self, context_id: uuid.UUID, user_id: str
    ) -> ContextParticipant | None:
        statement = select(ContextParticipant).where(
            ContextParticipant.context_id == context_id, ContextParticipant.user_id == user_id
        )
        return (await self.session.scalars(statement)).one_or_none()


class ExpiryRepository(SyncRepository):
    """The sweep's view: external participants whose account must be deactivated."""

    def due(self, now: datetime, limit: int) -> list[ContextParticipant]:
        """Externals not yet cut off whose credential expired, or who were removed or whose
        context closed (a crash between the change and the deactivation leaves those)."""
        statement = (
            select(ContextParticipant)
            .where(
                ContextParticipant.kind == ParticipantKind.EXTERNAL,
                ContextParticipant.cut_off_at.is_(None),
                or_(
                    ContextParticipant.status != ParticipantState.ACTIVE,
                    ContextParticipant.expires_at <= now,
                ),
            )
            .order_by(ContextParticipant.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(self.session.scalars(statement).all())

    def homeserver(self, tenant_id: uuid.UUID) -> tuple[Tenant, Homeserver] | None:
        tenant = self.session.get(Tenant, tenant_id)
        hs = self.session.scalars(
            select(Homeserver).where(Homeserver.tenant_id == tenant_id)
        ).one_or_none()
        return (tenant, hs) if tenant is not None and hs is not None else None
