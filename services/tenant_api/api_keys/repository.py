"""All SQL on API keys for the API."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from platform_core.models import ApiKey
from tenant_api.kit.repository import Repository


class ApiKeyRepository(Repository):
    async def visible(self) -> list[ApiKey]:
        statement = select(ApiKey).order_by(ApiKey.created_at)
        return list((await self.session.scalars(self.scoped(statement, ApiKey.tenant_id))).all())

    async def get_visible(self, key_id: str) -> ApiKey | None:
        statement = self.scoped(select(ApiKey).where(ApiKey.key_id == key_id), ApiKey.tenant_id)
        return (await self.session.scalars(statement)).first()

    async def by_key_id(self, key_id: str) -> ApiKey | None:
        """Any key, whoever it belongs to: for authenticating its bearer."""
        return (await self.session.scalars(select(ApiKey).where(ApiKey.key_id == key_id))).first()

    async def mark_used(self, key: ApiKey, at: datetime) -> None:
        await self.session.execute(
            update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=at)
        )
