"""All SQL on API keys for the API."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import Principal
from platform_core.models import ApiKey
from tenant_api.tenants.repository import scoped


async def visible(session: AsyncSession, principal: Principal) -> list[ApiKey]:
    statement = select(ApiKey).order_by(ApiKey.created_at)
    return list((await session.scalars(scoped(statement, principal, ApiKey.tenant_id))).all())


async def get_visible(session: AsyncSession, principal: Principal, key_id: str) -> ApiKey | None:
    statement = scoped(select(ApiKey).where(ApiKey.key_id == key_id), principal, ApiKey.tenant_id)
    return (await session.scalars(statement)).first()
