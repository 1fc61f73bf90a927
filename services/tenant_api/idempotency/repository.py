"""All SQL on stored ``Idempotency-Key`` answers. The middleware owns the transactions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete

from platform_core.models import IdempotentRequest
from tenant_api.kit.repository import Repository


class IdempotencyRepository(Repository):
    """Unscoped: keyed by the caller's owner string, read before the endpoint runs."""

    async def delete_older_than(self, moment: datetime) -> None:
        await self.session.execute(
            delete(IdempotentRequest).where(IdempotentRequest.created_at < moment)
        )

    async def get(self, owner: str, key: str) -> IdempotentRequest | None:
        return await self.session.get(IdempotentRequest, (owner, key))

    def add(self, request: IdempotentRequest) -> None:
        self.session.add(request)

    async def remove(self, request: IdempotentRequest) -> None:
        await self.session.delete(request)
