"""All SQL on API keys for the API."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import Principal
from platform_core.models import ApiKey
from tenant_api.kit.scoping import scoped


async def visible(session: AsyncSession, principal: Principal) -> list[ApiKey]:
    statement = select(ApiKey).order_by(ApiKey.created_at)
    return list((await session.scalars(scoped(statement, principal, ApiKey.tenant_id))).all())


async def get_visible(session: AsyncSession, principal: Principal, key_id: str) -> ApiKey | None:
    statement = scoped(select(ApiKey).where(ApiKey.key_id == key_id), principal, ApiKey.tenant_id)
    return (await session.scalars(statement)).first()


async def by_key_id(session: AsyncSession, key_id: str) -> ApiKey | None:
    """Any key, whoever it belongs to: for authenticating its bearer."""
    return (await session.scalars(select(ApiKey).where(ApiKey.key_id == key_id))).first()


async def mark_used(session: AsyncSession, key: ApiKey, at: datetime) -> None:
    await session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=at))
