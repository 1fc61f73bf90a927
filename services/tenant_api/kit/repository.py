"""The repository base: a session and the principal whose view of the data it serves."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, text
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import Principal
from platform_core.db import async_engine
from platform_core.models import Tenant
from tenant_api.kit.scoping import scoped


class Repository:
    """All SQL of a domain lives in its subclass; ``scoped`` hides other tenants' rows."""

    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.session = session
        self.principal = principal

    def scoped(self, statement: Select, tenant_column: Any = Tenant.id) -> Select:  # type: ignore[type-arg]
        return scoped(statement, self.principal, tenant_column)


async def ping_database() -> None:
    """Raises if the platform database does not answer (for ``/healthz``)."""
    async with async_engine().connect() as conn:
        await conn.execute(text("SELECT 1"))
