"""All SQL on accounts and refresh tokens (async: the API)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update

from platform_core.models import Account, RefreshToken
from tenant_api.kit.repository import Repository


class AccountRepository(Repository):
    """Unscoped: accounts are read before there is a principal (sign-in, refresh)."""

    async def by_email(self, email: str) -> Account | None:
        return (await self.session.scalars(select(Account).where(Account.email == email))).first()

    async def get(self, account_id: uuid.UUID) -> Account | None:
        return await self.session.get(Account, account_id)

    async def refresh_token(self, token_hash: str) -> RefreshToken | None:
        statement = select(RefreshToken).where(RefreshToken.token_hash == token_hash)
        return (await self.session.scalars(statement.with_for_update())).first()

    async def revoke_family(self, family_id: uuid.UUID, at: datetime) -> None:
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=at)
        )

    async def revoke_all_refresh_tokens(self, account_id: uuid.UUID, at: datetime) -> None:
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.account_id == account_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=at)
        )
