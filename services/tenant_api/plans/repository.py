"""All SQL on plans for the API."""

from __future__ import annotations

from sqlalchemy import select

from platform_core.models import Plan
from tenant_api.kit.repository import Repository


class PlanRepository(Repository):
    async def list(self) -> list[Plan]:
        return list((await self.session.scalars(select(Plan).order_by(Plan.code))).all())

    async def get_by_code(self, code: str) -> Plan | None:
        return (await self.session.scalars(select(Plan).where(Plan.code == code))).first()

    async def add(self, plan: Plan) -> None:
        self.session.add(plan)
        await self.session.flush()
