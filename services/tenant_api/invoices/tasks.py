"""The finalization beat task: every month that ended more than the grace period ago gets
its invoice, once, in month order per tenant."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from platform_core.celery import TaskNames, celery_app
from platform_core.db import task_session
from platform_core.models import utcnow
from platform_core.settings import get_settings
from tenant_api.invoices import service
from tenant_api.invoices.repository import InvoiceRepository

log = logging.getLogger(__name__)
app = celery_app()


def finalize_one(tenant_id: uuid.UUID, period: str, now: datetime) -> uuid.UUID:
    """Finalize one invoice in its own transaction; returns its id (also when another
    finalizer won the race)."""
    try:
        with task_session() as session:
            return service.finalize(session, tenant_id, period, now).id
    except service.AlreadyFinalized as won:
        return won.invoice_id
    except IntegrityError:  # the unique (tenant, period) constraint: someone else committed
        with task_session() as session:
            invoice = InvoiceRepository(session).get_invoice(tenant_id, period)
            if invoice is None:
                raise
            return invoice.id


def finalize_due(now: datetime, grace: timedelta) -> dict[str, int]:
    cutoff = now - grace
    with task_session() as session:
        tenants = InvoiceRepository(session).tenants_alive_before(cutoff)
        invoiced: dict[uuid.UUID, set[str]] = defaultdict(set)
        for tenant_id, period in InvoiceRepository(session).invoiced_periods():
            invoiced[tenant_id].add(period)
        due = [
            (tenant.id, period)
            for tenant in tenants
            for period in service.due_periods(tenant, invoiced[tenant.id], cutoff)
        ]
    report = {"finalized": 0, "errors": 0}
    failed: set[uuid.UUID] = set()
    for tenant_id, period in due:
        if tenant_id in failed:  # months finalize in order: never skip a failed one
            continue
        try:
            finalize_one(tenant_id, period, now)
            report["finalized"] += 1
        except Exception:  # noqa: BLE001 — one tenant's trouble must not stop the others
            log.exception("finalizing invoice %s of tenant %s failed", period, tenant_id)
            failed.add(tenant_id)
            report["errors"] += 1
    return report


@app.task(name=TaskNames.FINALIZE_INVOICES, acks_late=True, ignore_result=True)
def finalize_invoices() -> dict[str, int]:
    grace = timedelta(hours=get_settings().invoice_grace_period_h)
    return finalize_due(utcnow(), grace)
