"""All SQL on stored ``Idempotency-Key`` answers. The middleware owns the transactions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.models import IdempotentRequest


async def delete_older_than(session: AsyncSession, moment: datetime) -> None:
    await session.execute(delete(IdempotentRequest).where(IdempotentRequest.created_at < moment))


async def get(session: AsyncSession, owner: str, key: str) -> IdempotentRequest | None:
    return await session.get(IdempotentRequest, (owner, key))


def add(session: AsyncSession, request: IdempotentRequest) -> None:
    session.add(request)


async def remove(session: AsyncSession, request: IdempotentRequest) -> None:
    await session.delete(request)
