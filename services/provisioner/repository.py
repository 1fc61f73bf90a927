"""All SQL the provisioner runs (sync sessions: Celery tasks are sync)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from platform_core.models import (
    AuditEvent,
    ExportState,
    Homeserver,
    Operation,
    OperationState,
    Plan,
    Tenant,
    TenantExport,
    TenantStatus,
    UsageCounter,
    UsageReconciliation,
)


def get_operation(session: Session, operation_id: uuid.UUID) -> Operation | None:
    """The operation, row-locked until the transaction ends (PostgreSQL): its history is
    rewritten whole, so a worker and the reconciler must not interleave read and write."""
    return session.get(Operation, operation_id, with_for_update=True)


def get_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    return session.get(Tenant, tenant_id)


def get_plan(session: Session, plan_id: uuid.UUID) -> Plan:
    plan = session.get(Plan, plan_id)
    if plan is None:
        raise LookupError(f"plan {plan_id} does not exist")
    return plan


def get_homeserver(session: Session, tenant_id: uuid.UUID) -> Homeserver | None:
    return session.scalars(select(Homeserver).where(Homeserver.tenant_id == tenant_id)).first()


def taken_ports(session: Session) -> set[int]:
    return {p for p in session.scalars(select(Homeserver.port)) if p is not None}


def tenants_with_status(session: Session, statuses: Sequence[TenantStatus]) -> list[Tenant]:
    return list(session.scalars(select(Tenant).where(Tenant.status.in_(statuses))))


def unfinished_operations_older_than(session: Session, cutoff: datetime) -> list[Operation]:
    return list(
        session.scalars(
            select(Operation)
            .where(
                Operation.state.in_([OperationState.PENDING, OperationState.RUNNING]),
                Operation.updated_at < cutoff,
            )
            # A worker busy with one of them holds its row: leave that one to the worker.
            .with_for_update(skip_locked=True)
        )
    )


def billed_totals(session: Session, tenant_id: uuid.UUID, meters: Sequence[str]) -> dict[str, int]:
    rows = session.execute(
        select(UsageCounter.meter, func.sum(UsageCounter.quantity))
        .where(UsageCounter.tenant_id == tenant_id, UsageCounter.meter.in_(list(meters)))
        .group_by(UsageCounter.meter)
    )
    found = {meter: int(total or 0) for meter, total in rows}
    return {meter: found.get(meter, 0) for meter in meters}


def sleepers_checked_since(
    session: Session, margin: timedelta, among: Collection[uuid.UUID] | None = None
) -> set[uuid.UUID]:
    """Tenants (of ``among``, when given) whose homeserver sleeps and whose usage was last
    checked at least ``margin`` after it fell asleep: a sleeping homeserver records nothing, so
    that check still holds. One index lookup per sleeper (its latest check), however long the
    history of checks; ``among`` is applied here, not as SQL ``IN`` (no bound-parameter limit
    at 10,000 tenants)."""
    last_check = (
        select(func.max(UsageReconciliation.checked_at))
        .where(UsageReconciliation.tenant_id == Homeserver.tenant_id)
        .correlate(Homeserver)
        .scalar_subquery()
    )
    query = select(Homeserver.tenant_id, Homeserver.asleep_since, last_check).where(
        Homeserver.asleep_since.is_not(None)
    )
    wanted = None if among is None else set(among)
    return {
        tenant_id
        for tenant_id, since, checked_at in session.execute(query).tuples()
        if (wanted is None or tenant_id in wanted)
        and since is not None
        and checked_at is not None
        and checked_at >= since + margin
    }


def record_reconciliation(
    session: Session,
    tenant_id: uuid.UUID,
    meter: str,
    billed: int,
    homeserver: int,
    checked_at: datetime,
) -> UsageReconciliation:
    row = UsageReconciliation(
        tenant_id=tenant_id,
        checked_at=checked_at,
        meter=meter,
        billed=billed,
        homeserver=homeserver,
        drift=homeserver - billed,
    )
    session.add(row)
    return row


def last_audit_event_by(session: Session, tenant_id: uuid.UUID, actor: str) -> AuditEvent | None:
    """The newest audit event ``actor`` recorded for the tenant."""
    return session.scalars(
        select(AuditEvent)
        .where(AuditEvent.tenant_id == tenant_id, AuditEvent.actor == actor)
        .order_by(AuditEvent.occurred_at.desc())
        .limit(1)
    ).first()


def get_export_by_operation(session: Session, operation_id: uuid.UUID) -> TenantExport | None:
    return session.scalars(
        select(TenantExport).where(TenantExport.operation_id == operation_id)
    ).first()


def ready_exports_due(
    session: Session, now: datetime, gone: Sequence[TenantStatus]
) -> list[TenantExport]:
    """Ready exports past their expiry or whose tenant is in one of the ``gone`` statuses."""
    return list(
        session.scalars(
            select(TenantExport)
            .join(Tenant, Tenant.id == TenantExport.tenant_id)
            .where(
                TenantExport.state == ExportState.READY,
                or_(TenantExport.expires_at <= now, Tenant.status.in_(gone)),
            )
        )
    )


def pending_exports_of_failed_operations(session: Session) -> list[TenantExport]:
    """Exports still pending whose operation gave up."""
    return list(
        session.scalars(
            select(TenantExport)
            .join(Operation, Operation.id == TenantExport.operation_id)
            .where(
                TenantExport.state == ExportState.PENDING,
                Operation.state == OperationState.FAILED,
            )
        )
    )


def awake_active_homeservers(session: Session) -> list[tuple[uuid.UUID, dict[str, Any]]]:
    """(tenant id, plan limits) of every active tenant whose homeserver is awake: the sleep
    pass's candidates."""
    rows = session.execute(
        select(Tenant.id, Plan.limits)
        .join(Plan, Plan.id == Tenant.plan_id)
        .join(Homeserver, Homeserver.tenant_id == Tenant.id)
        .where(Tenant.status == TenantStatus.ACTIVE, Homeserver.asleep_since.is_(None))
    )
    return [(tenant_id, dict(limits or {})) for tenant_id, limits in rows]


def stopped_homeservers(session: Session) -> list[tuple[Tenant, Plan, Homeserver]]:
    """Every tenant whose homeserver is stopped on purpose — an active tenant's that sleeps,
    a suspended tenant's — with its plan and homeserver (one query)."""
    rows = session.execute(
        select(Tenant, Plan, Homeserver)
        .join(Plan, Plan.id == Tenant.plan_id)
        .join(Homeserver, Homeserver.tenant_id == Tenant.id)
        .where(
            or_(
                and_(Tenant.status == TenantStatus.ACTIVE, Homeserver.asleep_since.is_not(None)),
                Tenant.status == TenantStatus.SUSPENDED,
            )
        )
    )
    return [(tenant, plan, hs) for tenant, plan, hs in rows]


def sleeping_tenants(
    session: Session, among: Sequence[uuid.UUID | str] | None = None
) -> list[uuid.UUID]:
    """Active tenants whose homeserver sleeps (only those ``among`` these ids, when given)."""
    query = (
        select(Tenant.id)
        .join(Homeserver, Homeserver.tenant_id == Tenant.id)
        .where(Tenant.status == TenantStatus.ACTIVE, Homeserver.asleep_since.is_not(None))
    )
    if among is not None:
        query = query.where(Tenant.id.in_([uuid.UUID(str(tenant_id)) for tenant_id in among]))
    return list(session.scalars(query))
