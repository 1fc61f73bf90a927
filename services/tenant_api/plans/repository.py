"""All SQL on plans for the API."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.models import Plan


class PlanRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list(self) -> list[Plan]:
        return list((await self.session.scalars(select(Plan).order_by(Plan.code))).all())

    async def get_by_code(self, code: str) -> Plan | None:
        return (await self.session.scalars(select(Plan).where(Plan.code == code))).first()

    async def add(self, plan: Plan) -> None:
        self.session.add(plan)
        await self.session.flush()
