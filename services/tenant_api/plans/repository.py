"""All SQL on plans for the API."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from platform_core.models import Plan, Tenant
from tenant_api.kit.repository import Repository


class PlanRepository(Repository):
    async def list(self) -> list[Plan]:
        return list((await self.session.scalars(select(Plan).order_by(Plan.code))).all())

    async def get_by_code(self, code: str) -> Plan | None:
        return (await self.session.scalars(select(Plan).where(Plan.code == code))).first()

    async def add(self, plan: Plan) -> None:
        self.session.add(plan)
        await self.session.flush()

    async def limits_of_tenant(self, tenant_id: uuid.UUID) -> dict[str, Any]:
        """The limits of ``tenant_id``'s plan (empty: the defaults apply)."""
        statement = (
            select(Plan.limits)
            .join(Tenant, Tenant.plan_id == Plan.id)
            .where(Tenant.id == tenant_id)
        )
        return dict((await self.session.scalar(statement)) or {})
