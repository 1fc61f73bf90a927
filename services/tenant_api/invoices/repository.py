"""All SQL on invoices, plan history and the usage they are rated from (sync sessions: the
API runs these through ``AsyncSession.run_sync``, the finalization task directly)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import selectinload

from platform_core.models import (
    Invoice,
    InvoiceCounter,
    InvoiceLine,
    Plan,
    Tenant,
    TenantPlanChange,
    UsageCounter,
)
from tenant_api.kit.repository import SyncRepository


class InvoiceRepository(SyncRepository):
    def get_tenant(self, tenant_id: uuid.UUID) -> Tenant | None:
        return self.session.get(Tenant, tenant_id)

    def tenants_alive_before(self, moment: datetime) -> list[Tenant]:
        """Tenants that existed at some point before ``moment`` (deleted ones included)."""
        return list(self.session.scalars(select(Tenant).where(Tenant.created_at < moment)))

    def plan_changes(self, tenant_id: uuid.UUID) -> list[tuple[datetime, Plan]]:
        rows = self.session.execute(
            select(TenantPlanChange.effective_at, Plan)
            .join(Plan, Plan.id == TenantPlanChange.plan_id)
            .where(TenantPlanChange.tenant_id == tenant_id)
            .order_by(TenantPlanChange.effective_at, TenantPlanChange.id)
        )
        return [(at, plan) for at, plan in rows]

    def get_plan(self, plan_id: uuid.UUID) -> Plan:
        plan = self.session.get(Plan, plan_id)
        if plan is None:
            raise LookupError(f"plan {plan_id} does not exist")
        return plan

    def usage_between(self, tenant_id: uuid.UUID, start: datetime, end: datetime) -> dict[str, int]:
        rows = self.session.execute(
            select(UsageCounter.meter, func.sum(UsageCounter.quantity))
            .where(
                UsageCounter.tenant_id == tenant_id,
                UsageCounter.period_start >= start,
                UsageCounter.period_start < end,
            )
            .group_by(UsageCounter.meter)
        )
        return {meter: int(total or 0) for meter, total in rows}

    def finalized_invoices(self, tenant_id: uuid.UUID) -> list[Invoice]:
        return list(
            self.session.scalars(
                select(Invoice)
                .where(Invoice.tenant_id == tenant_id)
                .options(selectinload(Invoice.lines))
                .order_by(Invoice.period)
            )
        )

    def get_invoice(self, tenant_id: uuid.UUID, period: str) -> Invoice | None:
        return self.session.scalars(
            select(Invoice)
            .where(Invoice.tenant_id == tenant_id, Invoice.period == period)
            .options(selectinload(Invoice.lines))
        ).first()

    def get_invoice_by_number(self, tenant_id: uuid.UUID, number: str) -> Invoice | None:
        return self.session.scalars(
            select(Invoice)
            .where(Invoice.tenant_id == tenant_id, Invoice.number == number)
            .options(selectinload(Invoice.lines))
        ).first()

    def invoiced_periods(self) -> set[tuple[uuid.UUID, str]]:
        return {(t, p) for t, p in self.session.execute(select(Invoice.tenant_id, Invoice.period))}

    def take_invoice_number(self) -> int:
        """The next number, locking the counter row until this transaction ends: finalizations
        run one at a time, and a rolled-back one gives its number back (no gaps)."""
        taken = self.session.execute(
            update(InvoiceCounter)
            .where(InvoiceCounter.name == "invoice")
            .values(next_value=InvoiceCounter.next_value + 1)
            .returning(InvoiceCounter.next_value)
        ).scalar_one()
        return int(taken) - 1

    def add_invoice(self, invoice: Invoice, lines: list[InvoiceLine]) -> None:
        # Through the relationship, so the new invoice carries its lines without a load
        # (``Invoice.lines`` is lazy="raise"; the caller renders the invoice at once).
        invoice.lines = lines
        self.session.add(invoice)
        self.session.flush()
