"""The repository base: a session and the principal whose view of the data it serves.

One rule for sync and async: API code is async (``AsyncSession``); code shared with Celery
tasks (``invoices/``, ``usage/`` ingestion) is sync (``Session``), and the API calls it through
``AsyncSession.run_sync`` at the service boundary."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from platform_core.auth import Principal
from platform_core.db import async_engine
from platform_core.models import Tenant
from tenant_api.kit.scoping import scoped


class Repository:
    """All SQL of a domain lives in its subclass; ``scoped`` hides other tenants' rows.

    ``principal`` is None for repositories that serve no principal (sign-in before there is
    one, the idempotency middleware, platform gauges): they cannot scope, and say so."""

    def __init__(self, session: AsyncSession, principal: Principal | None = None) -> None:
        self.session = session
        self.principal = principal

    def scoped(self, statement: Select, tenant_column: Any = Tenant.id) -> Select:  # type: ignore[type-arg]
        if self.principal is None:
            raise TypeError(f"{type(self).__name__} has no principal to scope by")
        return scoped(statement, self.principal, tenant_column)


def keyset_page(
    statement: Select,  # type: ignore[type-arg]
    model: Any,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Select:  # type: ignore[type-arg]
    """At most ``limit`` rows of ``model`` in (created_at, id) order, those after the cursor
    ``after`` (``tenant_api.kit.pagination``) when one is given."""
    if after is not None:
        created_at, row_id = after
        statement = statement.where(
            or_(
                model.created_at > created_at,
                and_(model.created_at == created_at, model.id > row_id),
            )
        )
    return statement.order_by(model.created_at, model.id).limit(limit)


class SyncRepository:
    """The base for repositories shared with Celery tasks (sync ``Session``). Unscoped: the
    API authorises the tenant (``TenantRepository.get_or_404``) before it calls in through
    ``run_sync``, and tasks act for the platform."""

    def __init__(self, session: Session) -> None:
        self.session = session


async def ping_database() -> None:
    """Raises if the platform database does not answer (for ``/healthz``)."""
    async with async_engine().connect() as conn:
        await conn.execute(text("SELECT 1"))
