"""All SQL on the usage ledger: totals and series for the API (async), batch application (sync).

Batch application on PostgreSQL sends each table's rows as arrays through ``unnest`` (one
statement, one round trip, however many rows); SQLite takes multi-row VALUES in chunks.
Rows are sorted by key so that concurrent consumers take row locks in the same order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from platform_core.models import (
    BillableEvent,
    Tenant,
    UsageBatch,
    UsageCounter,
    UsageReconciliation,
)
from platform_core.usage_batch import UsageEvent
from tenant_api.kit.repository import Repository, SyncRepository

_SQLITE_CHUNK = 500


def _range(statement: Any, start: datetime | None, end: datetime | None) -> Any:
    if start is not None:
        statement = statement.where(UsageCounter.period_start >= start)
    if end is not None:
        statement = statement.where(UsageCounter.period_start < end)
    return statement


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _insert(session: Session, table: Any) -> Any:
    return (postgresql.insert if _is_postgres(session) else sqlite.insert)(table)


# Insert, and hand back only per-hour sums of what was new (not one row per event).
_PG_ADD_EVENTS = text(
    """
    WITH new AS (
        INSERT INTO billable_events (tenant_id, meter, natural_id, quantity, occurred_at)
        SELECT t, m, n, q, to_timestamp(o) FROM unnest(
            CAST(:tenant_ids AS uuid[]), CAST(:meters AS varchar[]),
            CAST(:natural_ids AS varchar[]), CAST(:quantities AS bigint[]),
            CAST(:occurred AS float8[])) AS e(t, m, n, q, o)
        ON CONFLICT DO NOTHING
        RETURNING tenant_id, meter, quantity, occurred_at
    )
    SELECT tenant_id, meter,
           date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AS hour, sum(quantity)
    FROM new GROUP BY tenant_id, meter, hour
    """
)

HourKey = tuple[uuid.UUID, str, datetime]


_PG_ADD_TO_COUNTERS = text(
    """
    INSERT INTO usage_counters (tenant_id, meter, period_start, quantity)
    SELECT * FROM unnest(
        CAST(:tenant_ids AS uuid[]), CAST(:meters AS varchar[]),
        CAST(:periods AS timestamptz[]), CAST(:quantities AS bigint[]))
    ON CONFLICT (tenant_id, meter, period_start)
    DO UPDATE SET quantity = usage_counters.quantity + excluded.quantity
    """
)


class UsageRepository(Repository):
    """Totals, series and reconciliations for the API."""

    async def totals(
        self, tenant_id: uuid.UUID, start: datetime | None, end: datetime | None
    ) -> dict[str, int]:
        statement = (
            select(UsageCounter.meter, func.sum(UsageCounter.quantity))
            .where(UsageCounter.tenant_id == tenant_id)
            .group_by(UsageCounter.meter)
        )
        rows = await self.session.execute(_range(statement, start, end))
        return {meter: int(total or 0) for meter, total in rows}

    async def totals_by_tenant(
        self, tenant_ids: list[uuid.UUID], meter: str, start: datetime, end: datetime
    ) -> dict[uuid.UUID, int]:
        """One meter's total per tenant over [start, end) (the portal's fleet: MAU)."""
        if not tenant_ids:
            return {}
        statement = (
            select(UsageCounter.tenant_id, func.sum(UsageCounter.quantity))
            .where(UsageCounter.tenant_id.in_(tenant_ids), UsageCounter.meter == meter)
            .group_by(UsageCounter.tenant_id)
        )
        rows = await self.session.execute(_range(statement, start, end))
        return {tenant_id: int(total or 0) for tenant_id, total in rows}

    async def hourly(
        self,
        tenant_id: uuid.UUID,
        start: datetime | None,
        end: datetime | None,
        meters: Iterable[str],
    ) -> list[tuple[datetime, str, int]]:
        statement = (
            select(UsageCounter.period_start, UsageCounter.meter, UsageCounter.quantity)
            .where(UsageCounter.tenant_id == tenant_id, UsageCounter.meter.in_(list(meters)))
            .order_by(UsageCounter.period_start)
        )
        rows = await self.session.execute(_range(statement, start, end))
        return [(period, meter, int(quantity)) for period, meter, quantity in rows]

    async def reconciliations(self, tenant_id: uuid.UUID, limit: int) -> list[UsageReconciliation]:
        statement = (
            select(UsageReconciliation)
            .where(UsageReconciliation.tenant_id == tenant_id)
            .order_by(UsageReconciliation.checked_at.desc(), UsageReconciliation.meter)
            .limit(limit)
        )
        return list((await self.session.scalars(statement)).all())


class UsageBatchRepository(SyncRepository):
    """Batch application, shared with the usage consumer task."""

    def claim_batches(self, batches: list[tuple[str, str]]) -> set[str]:
        """Record each (batch id, source) as applied; returns the ids that were not recorded
        before (apply only those)."""
        if not batches:
            return set()
        statement = (
            _insert(self.session, UsageBatch)
            .values([{"batch_id": b, "source": source[:128]} for b, source in batches])
            .on_conflict_do_nothing(index_elements=["batch_id"])
            .returning(UsageBatch.batch_id)
        )
        return set(self.session.scalars(statement))

    def existing_tenant_ids(self, tenant_ids: set[uuid.UUID]) -> set[uuid.UUID]:
        if not tenant_ids:
            return set()
        return set(self.session.scalars(select(Tenant.id).where(Tenant.id.in_(tenant_ids))))

    def add_billable_events(self, events: list[UsageEvent]) -> dict[HourKey, int]:
        """Insert the events whose natural id was never seen; returns the new quantity per
        (tenant, meter, UTC hour)."""
        if not events:
            return {}
        unique = {(e.tenant_id, e.meter, e.natural_id): e for e in events}
        ordered = sorted(unique.values(), key=lambda e: (e.natural_id, e.meter, e.tenant_id.int))
        added: dict[HourKey, int] = {}
        if _is_postgres(self.session):
            rows = self.session.execute(
                _PG_ADD_EVENTS,
                {
                    "tenant_ids": [str(e.tenant_id) for e in ordered],
                    "meters": [e.meter for e in ordered],
                    "natural_ids": [e.natural_id for e in ordered],
                    "quantities": [e.quantity for e in ordered],
                    "occurred": [e.ts for e in ordered],
                },
            ).all()
            for tenant_id, meter, hour, quantity in rows:
                key = (tenant_id, meter, hour.replace(tzinfo=UTC))
                added[key] = added.get(key, 0) + int(quantity)
            return added
        for start in range(0, len(ordered), _SQLITE_CHUNK):
            chunk = ordered[start : start + _SQLITE_CHUNK]
            statement = (
                _insert(self.session, BillableEvent)
                .values(
                    [
                        {
                            "tenant_id": e.tenant_id,
                            "meter": e.meter,
                            "natural_id": e.natural_id,
                            "quantity": e.quantity,
                            "occurred_at": e.occurred_at,
                        }
                        for e in chunk
                    ]
                )
                .on_conflict_do_nothing(index_elements=["tenant_id", "meter", "natural_id"])
                .returning(BillableEvent.natural_id, BillableEvent.meter, BillableEvent.tenant_id)
            )
            inserted = {(t, m, n) for n, m, t in self.session.execute(statement)}
            for e in chunk:
                if (e.tenant_id, e.meter, e.natural_id) in inserted:
                    key = (
                        e.tenant_id,
                        e.meter,
                        e.occurred_at.replace(minute=0, second=0, microsecond=0),
                    )
                    added[key] = added.get(key, 0) + e.quantity
        return added

    def add_to_counters(self, rows: list[tuple[uuid.UUID, str, datetime, int]]) -> None:
        """Upsert ``quantity += delta`` for each (tenant, meter, hour, delta); keys are unique."""
        rows = sorted(r for r in rows if r[3])
        if not rows:
            return
        if _is_postgres(self.session):
            tenant_ids, meters, periods, quantities = (
                list(column) for column in zip(*rows, strict=True)
            )
            self.session.execute(
                _PG_ADD_TO_COUNTERS,
                {
                    "tenant_ids": tenant_ids,
                    "meters": meters,
                    "periods": periods,
                    "quantities": quantities,
                },
            )
            return
        for start in range(0, len(rows), _SQLITE_CHUNK):
            statement = _insert(self.session, UsageCounter).values(
                [
                    {"tenant_id": t, "meter": m, "period_start": p, "quantity": q}
                    for t, m, p, q in rows[start : start + _SQLITE_CHUNK]
                ]
            )
            statement = statement.on_conflict_do_update(
                index_elements=["tenant_id", "meter", "period_start"],
                set_={"quantity": UsageCounter.quantity + statement.excluded.quantity},
            )
            self.session.execute(statement)
