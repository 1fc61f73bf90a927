"""The request boundary: one session per request that commits when the request succeeded and
rolls back when it failed; what it enqueued (tasks, follow-ups) runs only after the commit. Endpoints and
services never commit."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.db import async_sessionmaker_
from platform_core.errors import C3Error
from tenant_api.kit import tasks

_KEEP_ON_ERROR = "c3_keep_on_error"


def keep_on_error(session: AsyncSession) -> None:
    """What this request wrote so far stands even if it answers with an error (e.g. a revoked
    token family, a lockout's audit event): the boundary commits it before the error answer."""
    session.info[_KEEP_ON_ERROR] = True


async def request_session() -> AsyncIterator[AsyncSession]:
    """A FastAPI dependency (function scope: it ends after the answer is built, before it is
    sent, so a failed commit still turns into an error answer, e.g. 503)."""
    session = async_sessionmaker_()()
    try:
        try:
            yield session
        except C3Error:
            if session.info.pop(_KEEP_ON_ERROR, False):
                await _commit(session)
            else:
                await _rollback(session)
            raise
        except BaseException:
            await _rollback(session)
            raise
        await _commit(session)
    finally:
        await session.close()


async def _commit(session: AsyncSession) -> None:
    await session.commit()
    await tasks.run_after_commit(session)


async def _rollback(session: AsyncSession) -> None:
    tasks.discard(session)
    await session.rollback()
