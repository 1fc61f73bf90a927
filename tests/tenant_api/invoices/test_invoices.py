"""Invoices on the real database: proration, late usage, finalization once and forever."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from platform_core.db import sync_engine, task_session
from platform_core.models import (
    Invoice,
    InvoiceCounter,
    Plan,
    Tenant,
    TenantPlanChange,
    TenantStatus,
)
from tenant_api.invoices import service, tasks
from tenant_api.invoices.rating import invoice_total, rate_month
from tenant_api.invoices.repository import InvoiceRepository
from tenant_api.usage.repository import UsageBatchRepository

SEPT = datetime(2026, 9, 1, tzinfo=UTC)


def make_plan(base_fee: int, messages: dict[str, object]) -> uuid.UUID:
    with task_session() as session:
        plan = Plan(
            code=f"p{uuid.uuid4().hex[:10]}",
            name="Test plan",
            currency="EUR",
            base_fee_minor=base_fee,
            limits={},
            prices={"messages": messages},
        )
        session.add(plan)
        session.flush()
        return plan.id


def make_billed_tenant(created: datetime, plans: list[tuple[datetime, uuid.UUID]]) -> uuid.UUID:
    with task_session() as session:
        slug = f"b{uuid.uuid4().hex[:12]}"
        tenant = Tenant(
            slug=slug,
            display_name=slug,
            server_name=f"{slug}.c3.test",
            status=TenantStatus.ACTIVE,
            plan_id=plans[-1][1],
            created_at=created,
            updated_at=created,
        )
        session.add(tenant)
        session.flush()
        for at, plan_id in plans:
            session.add(TenantPlanChange(tenant_id=tenant.id, plan_id=plan_id, effective_at=at))
        return tenant.id


def add_messages(tenant_id: uuid.UUID, at: datetime, count: int) -> None:
    with task_session() as session:
        UsageBatchRepository(session).add_to_counters(
            [(tenant_id, "messages", at.replace(minute=0), count)]
        )


@pytest.fixture
def september_tenant(platform_env: dict[str, str]) -> uuid.UUID:
    """On plan A (3000/month, 100 messages included, then 5 each) from Sept 1, moved to plan
    B (6000/month, 2 per message) on Sept 11 at 15:00 UTC."""
    plan_a = make_plan(3000, {"included": 100, "unit_price": 5})
    plan_b = make_plan(6000, {"included": 0, "unit_price": 2})
    tenant = make_billed_tenant(
        SEPT, [(SEPT, plan_a), (datetime(2026, 9, 11, 15, tzinfo=UTC), plan_b)]
    )
    add_messages(tenant, datetime(2026, 9, 5, 10, tzinfo=UTC), 150)
    add_messages(tenant, datetime(2026, 9, 20, 10, tzinfo=UTC), 50)
    return tenant


def test_a_mid_month_plan_change_is_prorated_by_day(september_tenant: uuid.UUID) -> None:
    invoice_id = tasks.finalize_one(september_tenant, "2026-09", datetime(2026, 10, 5, tzinfo=UTC))
    with task_session() as session:
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None
        doc = service.doc_of(_with_lines(session, invoice))
    amounts = [(line.kind, line.first_day, line.last_day, line.amount) for line in doc.lines]
    assert amounts == [
        ("base_fee", 1, 10, 1000),  # plan A for 10 of 30 days
        ("usage", 1, 10, 585),  # 150 messages, 33 included (10/30 of 100), 117 x 5
        ("base_fee", 11, 30, 4000),  # plan B from the day of the change
        ("usage", 11, 30, 100),  # 50 messages x 2
    ]
    assert doc.total == invoice.total == 5685 == invoice_total(doc.lines)
    assert (doc.status, doc.currency, doc.period) == ("finalized", "EUR", "2026-09")


def _with_lines(session, invoice: Invoice) -> Invoice:  # type: ignore[no-untyped-def]
    found = InvoiceRepository(session).get_invoice(invoice.tenant_id, invoice.period)
    assert found is not None
    return found


def test_the_invoice_total_is_the_rated_usage(september_tenant: uuid.UUID) -> None:
    with task_session() as session:
        tenant = session.get(Tenant, september_tenant)
        assert tenant is not None
        draft = service.compose(session, tenant, "2026-09")
        spans = service.plan_spans(session, tenant, "2026-09")
    rated = rate_month(
        30,
        [
            service.Segment(s.first_day, s.last_day, s.terms, u)
            for s, u in zip(spans, ({"messages": 150}, {"messages": 50}), strict=True)
        ],
        {},
    )
    assert draft.total == sum(line.amount for line in draft.lines) == invoice_total(rated)


def test_late_usage_becomes_an_adjustment_on_the_next_invoice(
    september_tenant: uuid.UUID,
) -> None:
    tasks.finalize_one(september_tenant, "2026-09", datetime(2026, 10, 5, tzinfo=UTC))
    add_messages(september_tenant, datetime(2026, 9, 25, 8, tzinfo=UTC), 10)  # arrived late
    october = tasks.finalize_one(september_tenant, "2026-10", datetime(2026, 11, 5, tzinfo=UTC))
    with task_session() as session:
        september = service.doc_of(
            _with_lines(session, _invoice(session, september_tenant, "2026-09"))
        )
        doc = service.doc_of(_with_lines(session, _by_id(session, october)))
        november = service.compose(session, _tenant(session, september_tenant), "2026-11")
    assert september.total == 5685  # finalized: unchanged
    adjustments = [line for line in doc.lines if line.kind == "adjustment"]
    assert [(a.adjusts_period, a.meter, a.quantity, a.amount) for a in adjustments] == [
        ("2026-09", "messages", 10, 20)
    ]
    assert doc.total == 6000 + 20  # October on plan B, no usage, plus the adjustment
    assert not [line for line in november.lines if line.kind == "adjustment"]  # billed once


def _invoice(session, tenant_id: uuid.UUID, period: str) -> Invoice:  # type: ignore[no-untyped-def]
    invoice = session.scalars(
        select(Invoice).where(Invoice.tenant_id == tenant_id, Invoice.period == period)
    ).one()
    return invoice


def _by_id(session, invoice_id: uuid.UUID) -> Invoice:  # type: ignore[no-untyped-def]
    invoice = session.get(Invoice, invoice_id)
    assert invoice is not None
    return invoice


def _tenant(session, tenant_id: uuid.UUID) -> Tenant:  # type: ignore[no-untyped-def]
    tenant = session.get(Tenant, tenant_id)
    assert tenant is not None
    return tenant


def test_price_changes_after_finalization_do_not_touch_finalized_months(
    september_tenant: uuid.UUID,
) -> None:
    tasks.finalize_one(september_tenant, "2026-09", datetime(2026, 10, 5, tzinfo=UTC))
    with task_session() as session:
        for plan in session.scalars(select(Plan).where(Plan.code.like("p%"))):
            plan.prices = {"messages": {"included": 0, "unit_price": 1000}}
    with task_session() as session:
        october = service.compose(session, _tenant(session, september_tenant), "2026-10")
    assert not [line for line in october.lines if line.kind == "adjustment"]


def test_concurrent_finalization_yields_exactly_one_invoice(
    september_tenant: uuid.UUID,
) -> None:
    with task_session() as session:
        before = session.get(InvoiceCounter, "invoice").next_value  # type: ignore[union-attr]
    now = datetime(2026, 10, 5, tzinfo=UTC)
    results: list[uuid.UUID] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def finalize() -> None:
        start.wait()
        try:
            results.append(tasks.finalize_one(september_tenant, "2026-09", now))
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=finalize) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(set(results)) == 1 and len(results) == 6
    with task_session() as session:
        count = session.scalar(
            select(func.count()).select_from(Invoice).where(Invoice.tenant_id == september_tenant)
        )
        after = session.get(InvoiceCounter, "invoice").next_value  # type: ignore[union-attr]
        number = _by_id(session, results[0]).number
    assert count == 1
    # No gaps: the winner took the next number and the five losers gave theirs back.
    assert after == before + 1
    assert number == f"C3-{before:08d}"


def test_the_beat_task_finalizes_only_after_the_grace_period(
    september_tenant: uuid.UUID,
) -> None:
    grace = timedelta(hours=72)
    tasks.finalize_due(datetime(2026, 10, 2, tzinfo=UTC), grace)  # inside the grace period
    with task_session() as session:
        assert not session.scalars(
            select(Invoice).where(Invoice.tenant_id == september_tenant)
        ).all()
    tasks.finalize_due(datetime(2026, 10, 4, 1, tzinfo=UTC), grace)
    tasks.finalize_due(datetime(2026, 10, 4, 2, tzinfo=UTC), grace)  # nothing new to do
    with task_session() as session:
        periods = session.scalars(
            select(Invoice.period).where(Invoice.tenant_id == september_tenant)
        ).all()
    assert periods == ["2026-09"]


def test_a_finalized_invoice_cannot_be_changed_in_the_database(
    september_tenant: uuid.UUID,
) -> None:
    if sync_engine().dialect.name != "postgresql":
        pytest.skip("the immutability trigger is PostgreSQL's")
    invoice_id = tasks.finalize_one(september_tenant, "2026-09", datetime(2026, 10, 5, tzinfo=UTC))
    for statement in (
        "UPDATE invoices SET total = 0 WHERE id = :id",
        "DELETE FROM invoices WHERE id = :id",
        "UPDATE invoice_lines SET amount = 0 WHERE invoice_id = :id",
        "DELETE FROM invoice_lines WHERE invoice_id = :id",
    ):
        with pytest.raises(DBAPIError, match="finalized"):
            with task_session() as session:
                session.execute(text(statement), {"id": invoice_id})
    with task_session() as session:
        assert _by_id(session, invoice_id).total == 5685


def test_a_month_that_has_not_ended_cannot_be_finalized(september_tenant: uuid.UUID) -> None:
    from platform_core.errors import Conflict

    with pytest.raises(Conflict, match="not ended"):
        tasks.finalize_one(september_tenant, "2026-10", datetime(2026, 10, 20, tzinfo=UTC))
