"""All SQL on the usage ledger: totals for the API (async) and batch application (sync)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from platform_core.models import BillableEvent, Tenant, UsageBatch, UsageCounter


async def totals(
    session: AsyncSession, tenant_id: uuid.UUID, start: datetime | None, end: datetime | None
) -> dict[str, int]:
    statement = (
        select(UsageCounter.meter, func.sum(UsageCounter.quantity))
        .where(UsageCounter.tenant_id == tenant_id)
        .group_by(UsageCounter.meter)
    )
    if start is not None:
        statement = statement.where(UsageCounter.period_start >= start)
    if end is not None:
        statement = statement.where(UsageCounter.period_start < end)
    return {meter: int(total or 0) for meter, total in await session.execute(statement)}


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def claim_batch(session: Session, batch_id: str, source: str) -> bool:
    """Record ``batch_id`` as applied; False if it already was (then apply nothing)."""
    statement = (
        _insert(session, UsageBatch)
        .values(batch_id=batch_id, source=source[:128])
        .on_conflict_do_nothing(index_elements=["batch_id"])
        .returning(UsageBatch.batch_id)
    )
    return session.execute(statement).first() is not None


def existing_tenant_ids(session: Session, tenant_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    if not tenant_ids:
        return set()
    return set(session.scalars(select(Tenant.id).where(Tenant.id.in_(tenant_ids))))


def add_billable_events(
    session: Session, tenant_id: uuid.UUID, meter: str, natural_ids: list[str], at: datetime
) -> int:
    """Insert events not seen before; returns how many were new."""
    if not natural_ids:
        return 0
    statement = (
        _insert(session, BillableEvent)
        .values(
            [
                {"tenant_id": tenant_id, "meter": meter, "natural_id": nid, "occurred_at": at}
                for nid in natural_ids
            ]
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "meter", "natural_id"])
        .returning(BillableEvent.natural_id)
    )
    return len(session.execute(statement).all())


def add_to_counters(session: Session, rows: list[tuple[uuid.UUID, str, datetime, int]]) -> None:
    """Upsert ``quantity += delta`` for each (tenant, meter, hour, delta)."""
    rows = [r for r in rows if r[3]]
    if not rows:
        return
    statement = _insert(session, UsageCounter).values(
        [{"tenant_id": t, "meter": m, "period_start": p, "quantity": q} for t, m, p, q in rows]
    )
    statement = statement.on_conflict_do_update(
        index_elements=["tenant_id", "meter", "period_start"],
        set_={"quantity": UsageCounter.quantity + statement.excluded.quantity},
    )
    session.execute(statement)
