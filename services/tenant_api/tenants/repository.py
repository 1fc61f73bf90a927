"""All SQL on tenants and plans for the API."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import Principal
from platform_core.errors import NotFound
from platform_core.models import Homeserver, Plan, Tenant, TenantPlanChange
from tenant_api.kit.repository import Repository, keyset_page


class TenantRepository(Repository):
    principal: Principal  # required: the tenants service asks who is asking (plan changes)

    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        super().__init__(session, principal)

    async def get(self, tenant_id: uuid.UUID, *, for_update: bool = False) -> Tenant | None:
        statement = self.scoped(select(Tenant).where(Tenant.id == tenant_id))
        if for_update:  # held until the transaction ends (PostgreSQL; SQLite has one writer)
            statement = statement.with_for_update()
        return (await self.session.scalars(statement)).first()

    async def get_or_404(self, tenant_id: uuid.UUID, *, for_update: bool = False) -> Tenant:
        """The tenant if this principal may see it; otherwise 404 (never 403: no existence leak).
        ``for_update`` locks its row until the transaction ends (changes that read, then write)."""
        tenant = await self.get(tenant_id, for_update=for_update)
        if tenant is None:
            raise NotFound(f"tenant {tenant_id} not found")
        return tenant

    async def get_by_slug(self, slug: str) -> Tenant | None:
        return (await self.session.scalars(select(Tenant).where(Tenant.slug == slug))).first()

    async def get_by_server_name(self, server_name: str) -> Tenant | None:
        statement = select(Tenant).where(Tenant.server_name == server_name)
        return (await self.session.scalars(statement)).first()

    async def page(self, *, limit: int, after: tuple[datetime, uuid.UUID] | None) -> list[Tenant]:
        statement = keyset_page(select(Tenant), Tenant, after, limit)
        return list((await self.session.scalars(self.scoped(statement))).all())

    async def add(self, tenant: Tenant) -> None:
        self.session.add(tenant)
        await self.session.flush()

    async def add_plan_change(self, change: TenantPlanChange) -> None:
        self.session.add(change)
        await self.session.flush()

    async def plan_codes(self, plan_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
        if not plan_ids:
            return {}
        rows = await self.session.execute(select(Plan.id, Plan.code).where(Plan.id.in_(plan_ids)))
        return {plan_id: code for plan_id, code in rows}

    async def get_plan(self, code: str | None) -> Plan | None:
        statement = select(Plan).where(Plan.code == code if code else Plan.is_default.is_(True))
        return (await self.session.scalars(statement)).first()

    async def asleep_since(self, tenant_ids: set[uuid.UUID]) -> dict[uuid.UUID, datetime]:
        """Since when each of these tenants' homeservers sleeps (awake ones are left out)."""
        if not tenant_ids:
            return {}
        rows = await self.session.execute(
            select(Homeserver.tenant_id, Homeserver.asleep_since).where(
                Homeserver.tenant_id.in_(tenant_ids), Homeserver.asleep_since.is_not(None)
            )
        )
        return {tenant_id: since for tenant_id, since in rows if since is not None}

    async def get_homeserver(self, tenant_id: uuid.UUID) -> Homeserver | None:
        statement = select(Homeserver).where(Homeserver.tenant_id == tenant_id)
        return (await self.session.scalars(statement)).first()
