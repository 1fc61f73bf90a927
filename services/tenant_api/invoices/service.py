"""Invoice rules: live drafts, finalization and late-usage adjustments. Never commits.

A month's invoice rates the tenant's hourly usage with the plan(s) in force, prorated by UTC
day (a plan change counts from the start of the day it happened on; a tenant created or
deleted mid-month pays for its days only). Finalized invoices never change: usage of a
finalized month that lands later is re-rated with the terms stored on that invoice and the
difference becomes an adjustment line on the next invoice to be finalized.
"""

from __future__ import annotations

import calendar
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from platform_core import webhook_events
from platform_core.errors import Conflict, InvalidRequest, NotFound
from platform_core.models import Invoice, InvoiceLine, InvoiceStatus, Plan, Tenant, utcnow
from tenant_api.invoices.rating import (
    MONTHLY_METERS,
    Line,
    MeterPrice,
    PlanTerms,
    Segment,
    Tier,
    invoice_total,
    rate_month,
)
from tenant_api.invoices.repository import InvoiceRepository
from tenant_api.kit.audit import AuditContext


@dataclass
class InvoiceDoc:
    """An invoice as the API shows it (draft or finalized)."""

    tenant_id: uuid.UUID
    period: str
    status: str
    currency: str
    lines: list[Line]
    number: str | None = None
    finalized_at: datetime | None = None
    terms: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return invoice_total(self.lines)


# Periods ---------------------------------------------------------------------------------


def parse_period(period: str) -> date:
    try:
        first = datetime.strptime(period, "%Y-%m").date()
    except ValueError:
        raise InvalidRequest(f"period: '{period}' is not a month such as 2026-11") from None
    return first


def period_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def period_bounds(period: str) -> tuple[datetime, datetime, int]:
    first = parse_period(period)
    days = calendar.monthrange(first.year, first.month)[1]
    start = datetime(first.year, first.month, 1, tzinfo=UTC)
    return start, start + timedelta(days=days), days


def next_period(period: str) -> str:
    _, end, _ = period_bounds(period)
    return period_of(end)


# Terms -----------------------------------------------------------------------------------


def plan_terms(plan: Plan) -> PlanTerms:
    return PlanTerms(
        code=plan.code,
        currency=plan.currency,
        base_fee=plan.base_fee_minor,
        prices={meter: price_terms(raw) for meter, raw in (plan.prices or {}).items()},
    )


def price_terms(raw: dict[str, Any]) -> MeterPrice:
    return MeterPrice(
        included=int(raw.get("included", 0)),
        unit_price=int(raw.get("unit_price", 0)),
        per=int(raw.get("per", 1)),
        tiers=tuple(Tier(t.get("up_to"), int(t["unit_price"])) for t in raw.get("tiers", [])),
    )


def _terms_json(terms: PlanTerms) -> dict[str, Any]:
    return {
        "code": terms.code,
        "currency": terms.currency,
        "base_fee": terms.base_fee,
        "prices": {
            meter: {
                "included": p.included,
                "unit_price": p.unit_price,
                "per": p.per,
                "tiers": [{"up_to": t.up_to, "unit_price": t.unit_price} for t in p.tiers],
            }
            for meter, p in terms.prices.items()
        },
    }


def _terms_from_json(raw: dict[str, Any]) -> PlanTerms:
    return PlanTerms(
        code=raw["code"],
        currency=raw["currency"],
        base_fee=int(raw["base_fee"]),
        prices={meter: price_terms(p) for meter, p in raw["prices"].items()},
    )


@dataclass(frozen=True)
class DaySpan:
    first_day: int
    last_day: int
    terms: PlanTerms


def plan_spans(session: Session, tenant: Tenant, period: str) -> list[DaySpan]:
    """Which plan applied on which days of ``period`` while the tenant existed."""
    start, end, days = period_bounds(period)
    first_day = 1
    if tenant.created_at >= start:
        first_day = tenant.created_at.day
    last_day = days
    if tenant.deleted_at is not None and tenant.deleted_at < end:
        last_day = tenant.deleted_at.day
    if tenant.created_at >= end or (tenant.deleted_at is not None and tenant.deleted_at < start):
        return []
    changes = InvoiceRepository(session).plan_changes(tenant.id)
    if not changes:  # a tenant from before plan history: its current plan throughout
        changes = [(tenant.created_at, InvoiceRepository(session).get_plan(tenant.plan_id))]
    spans: list[DaySpan] = []
    for day in range(first_day, last_day + 1):
        day_end = start + timedelta(days=day)
        # A change counts from the start of its UTC day: the last change made before the
        # day ended decides the day (the first plan covers anything before it).
        plan = changes[0][1]
        for at, candidate in changes:
            if at < day_end:
                plan = candidate
        terms = plan_terms(plan)
        if spans and spans[-1].terms == terms and spans[-1].last_day == day - 1:
            spans[-1] = DaySpan(spans[-1].first_day, day, terms)
        else:
            spans.append(DaySpan(day, day, terms))
    return spans


def _rate(session: Session, tenant_id: uuid.UUID, period: str, spans: list[DaySpan]) -> list[Line]:
    if not spans:
        return []
    start, _, days = period_bounds(period)
    segments = []
    for span in spans:
        seg_start = start + timedelta(days=span.first_day - 1)
        seg_end = start + timedelta(days=span.last_day)
        usage = InvoiceRepository(session).usage_between(tenant_id, seg_start, seg_end)
        segments.append(Segment(span.first_day, span.last_day, span.terms, usage))
    monthly = InvoiceRepository(session).usage_between(
        tenant_id, start, start + timedelta(days=days)
    )
    return rate_month(days, segments, {m: monthly.get(m, 0) for m in MONTHLY_METERS})


# Adjustments -----------------------------------------------------------------------------


def adjustments(session: Session, tenant_id: uuid.UUID, before: str) -> list[Line]:
    """Late usage of finalized months before ``before``: current rating − what was billed."""
    invoices = InvoiceRepository(session).finalized_invoices(tenant_id)
    billed: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])  # quantity, amount
    for invoice in invoices:
        for line in invoice.lines:
            if line.meter is None:
                continue
            if line.kind == "usage":
                key = (invoice.period, line.meter)
            elif line.kind == "adjustment" and line.adjusts_period:
                key = (line.adjusts_period, line.meter)
            else:
                continue
            billed[key][0] += line.quantity
            billed[key][1] += line.amount
    lines: list[Line] = []
    for invoice in invoices:
        if invoice.period >= before:
            continue
        spans = [
            DaySpan(s["first_day"], s["last_day"], _terms_from_json(s["plan"]))
            for s in invoice.terms
        ]
        now_rated: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        last_plan: dict[str, str | None] = {}
        for rated in _rate(session, tenant_id, invoice.period, spans):
            if rated.kind == "usage" and rated.meter is not None:
                now_rated[rated.meter][0] += rated.quantity
                now_rated[rated.meter][1] += rated.amount
                last_plan[rated.meter] = rated.plan
        for meter in sorted(now_rated):
            quantity, amount = now_rated[meter]
            was_quantity, was_amount = billed[(invoice.period, meter)]
            if quantity == was_quantity and amount == was_amount:
                continue
            lines.append(
                Line(
                    kind="adjustment",
                    description=f"Late usage for {invoice.period}: {meter}",
                    meter=meter,
                    quantity=quantity - was_quantity,
                    included=0,
                    unit_price=0,
                    per=1,
                    amount=amount - was_amount,
                    plan=last_plan[meter],
                    adjusts_period=invoice.period,
                )
            )
    return lines


# Drafts and finalization -------------------------------------------------------------------


def compose(session: Session, tenant: Tenant, period: str) -> InvoiceDoc:
    spans = plan_spans(session, tenant, period)
    currency = (
        spans[-1].terms.currency
        if spans
        else InvoiceRepository(session).get_plan(tenant.plan_id).currency
    )
    lines = _rate(session, tenant.id, period, spans) + adjustments(session, tenant.id, period)
    terms = [
        {"first_day": s.first_day, "last_day": s.last_day, "plan": _terms_json(s.terms)}
        for s in spans
    ]
    return InvoiceDoc(tenant.id, period, InvoiceStatus.DRAFT.value, currency, lines, terms=terms)


def upcoming(session: Session, tenant_id: uuid.UUID, now: datetime) -> InvoiceDoc:
    tenant = _tenant(session, tenant_id)
    return compose(session, tenant, period_of(now))


def _tenant(session: Session, tenant_id: uuid.UUID) -> Tenant:
    tenant = InvoiceRepository(session).get_tenant(tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return tenant


def format_number(sequence: int) -> str:
    return f"C3-{sequence:08d}"


def finalize(session: Session, tenant_id: uuid.UUID, period: str, now: datetime) -> Invoice:
    """The finalized invoice of ``period`` (created now unless it exists). Concurrent calls
    for the same tenant and period yield one invoice: the number counter serializes them."""
    _, end, _ = period_bounds(period)
    if end > now:
        raise Conflict(f"period {period} has not ended yet; see the upcoming invoice instead")
    existing = InvoiceRepository(session).get_invoice(tenant_id, period)
    if existing is not None:
        return existing
    tenant = _tenant(session, tenant_id)
    number = InvoiceRepository(session).take_invoice_number()
    existing = InvoiceRepository(session).get_invoice(
        tenant_id, period
    )  # finalized while we waited
    if existing is not None:
        raise AlreadyFinalized(existing)
    doc = compose(session, tenant, period)
    invoice = Invoice(
        tenant_id=tenant_id,
        period=period,
        number=format_number(number),
        status=InvoiceStatus.FINALIZED.value,
        currency=doc.currency,
        total=doc.total,
        terms=doc.terms,
        finalized_at=now,
    )
    rows = [
        InvoiceLine(
            position=position,
            kind=line.kind,
            description=line.description[:300],
            meter=line.meter,
            quantity=line.quantity,
            included=line.included,
            unit_price=line.unit_price,
            per=line.per,
            amount=line.amount,
            plan=line.plan,
            first_day=line.first_day,
            last_day=line.last_day,
            adjusts_period=line.adjusts_period,
        )
        for position, line in enumerate(doc.lines, start=1)
    ]
    InvoiceRepository(session).add_invoice(invoice, rows)
    # In the finalizing transaction: the event exists exactly when the invoice does.
    webhook_events.record(
        session,
        webhook_events.INVOICE_FINALIZED,
        tenant_id,
        {
            "invoice_id": str(invoice.id),
            "tenant_id": str(tenant_id),
            "number": invoice.number,
            "period": period,
            "currency": invoice.currency,
            "total": invoice.total,
        },
        natural_id=f"invoice.finalized:{invoice.id}",
    )
    return invoice


async def finalized_invoices(session: AsyncSession, tenant_id: uuid.UUID) -> list[Invoice]:
    return await session.run_sync(
        lambda sync_session: InvoiceRepository(sync_session).finalized_invoices(tenant_id)
    )


async def invoice_by_number(
    session: AsyncSession, tenant_id: uuid.UUID, number: str
) -> Invoice | None:
    return await session.run_sync(
        lambda sync_session: InvoiceRepository(sync_session).get_invoice_by_number(
            tenant_id, number
        )
    )


async def upcoming_now(session: AsyncSession, tenant_id: uuid.UUID) -> InvoiceDoc:
    """``upcoming`` asked for through the API: this month as it stands now."""
    return await session.run_sync(upcoming, tenant_id, utcnow())


async def finalize_requested(
    session: AsyncSession, audit: AuditContext, tenant_id: uuid.UUID, period: str
) -> InvoiceDoc:
    """``finalize`` asked for through the API (audited); a concurrent finalizer that won the
    race leaves its invoice, which is returned instead."""

    def run(sync_session: Session) -> InvoiceDoc:
        return doc_of(finalize(sync_session, tenant_id, period, utcnow()))

    try:
        doc = await session.run_sync(run)
    except AlreadyFinalized:
        await session.rollback()
        invoice = await session.run_sync(
            lambda sync_session: InvoiceRepository(sync_session).get_invoice(tenant_id, period)
        )
        assert invoice is not None
        return doc_of(invoice)
    audit.record("invoice.finalize", "invoice", doc.number, tenant_id=tenant_id)
    return doc


class AlreadyFinalized(Exception):
    """Another finalizer committed this invoice first: roll back (returns our number)."""

    def __init__(self, invoice: Invoice) -> None:
        super().__init__(invoice.number)
        self.invoice_id = invoice.id


def due_periods(tenant: Tenant, invoiced: set[str], cutoff: datetime) -> list[str]:
    """Months of the tenant's life that ended before ``cutoff`` and have no invoice yet."""
    periods = []
    period = period_of(tenant.created_at)
    last = period_of(tenant.deleted_at) if tenant.deleted_at is not None else None
    while True:
        _, end, _ = period_bounds(period)
        if end > cutoff:
            break
        if period not in invoiced:
            periods.append(period)
        if last is not None and period >= last:
            break
        period = next_period(period)
    return periods


def doc_of(invoice: Invoice) -> InvoiceDoc:
    lines = [
        Line(
            kind=row.kind,
            description=row.description,
            meter=row.meter,
            quantity=row.quantity,
            included=row.included,
            unit_price=row.unit_price,
            per=row.per,
            amount=row.amount,
            plan=row.plan,
            first_day=row.first_day,
            last_day=row.last_day,
            adjusts_period=row.adjusts_period,
        )
        for row in invoice.lines
    ]
    return InvoiceDoc(
        tenant_id=invoice.tenant_id,
        period=invoice.period,
        status=invoice.status,
        currency=invoice.currency,
        lines=lines,
        number=invoice.number,
        finalized_at=invoice.finalized_at,
        terms=invoice.terms,
    )
