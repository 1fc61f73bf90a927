"""/v1/tenants/{id}/invoices: the live draft, finalized invoices (JSON or CSV)."""

from __future__ import annotations

import csv
import io
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from platform_core.errors import NotFound
from tenant_api.deps import AuditDep, BillingRead, BillingWrite, SessionDep
from tenant_api.invoices import service
from tenant_api.invoices.schemas import InvoiceLineOut, InvoiceList, InvoiceOut, InvoiceSummary
from tenant_api.tenants.repository import TenantRepository

router = APIRouter(prefix="/v1/tenants/{tenant_id}/invoices", tags=["invoices"])

FormatQuery = Annotated[
    str | None, Query(alias="format", pattern="^(json|csv)$", description="or Accept: text/csv")
]
# Both media types of the 200 answer (JSON from response_model; CSV asked for by ?format=csv or
# Accept: text/csv), so clients and the OpenAPI document know the CSV exists.
_CSV_TOO: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The invoice: JSON, or CSV with a header row and one row per line",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}
CSV_COLUMNS = [
    "number",
    "period",
    "status",
    "currency",
    "kind",
    "description",
    "meter",
    "quantity",
    "included",
    "unit_price",
    "per",
    "amount",
    "plan",
    "first_day",
    "last_day",
    "adjusts_period",
]


def to_out(doc: service.InvoiceDoc) -> InvoiceOut:
    start, end, _ = service.period_bounds(doc.period)
    return InvoiceOut(
        tenant_id=doc.tenant_id,
        number=doc.number,
        period=doc.period,
        period_start=start,
        period_end=end,
        status=doc.status,
        currency=doc.currency,
        lines=[InvoiceLineOut(**vars(line)) for line in doc.lines],
        total=doc.total,
        finalized_at=doc.finalized_at,
    )


def _wants_csv(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    return "text/csv" in request.headers.get("accept", "")


def csv_response(doc: service.InvoiceDoc) -> Response:
    """The invoice as CSV (the API's and the portal's download, byte for byte)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    head = [doc.number or "", doc.period, doc.status, doc.currency]
    for line in doc.lines:
        values = vars(line)
        writer.writerow(head + ["" if values[c] is None else values[c] for c in CSV_COLUMNS[4:]])
    writer.writerow(head + ["total", "Total", "", "", "", "", "", doc.total, "", "", "", ""])
    name = f"invoice-{doc.number or 'draft-' + doc.period}.csv"
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _respond(request: Request, fmt: str | None, doc: service.InvoiceDoc) -> InvoiceOut | Response:
    return csv_response(doc) if _wants_csv(request, fmt) else to_out(doc)


@router.get("", response_model=InvoiceList, name="invoices.list")
async def list_invoices(
    tenant_id: uuid.UUID, session: SessionDep, principal: BillingRead
) -> InvoiceList:
    await TenantRepository(session, principal).get_or_404(tenant_id)
    invoices = await service.finalized_invoices(session, tenant_id)
    return InvoiceList(
        items=[
            InvoiceSummary(
                number=i.number,
                period=i.period,
                status=i.status,
                currency=i.currency,
                total=i.total,
                finalized_at=i.finalized_at,
            )
            for i in invoices
        ]
    )


@router.get("/upcoming", response_model=InvoiceOut, responses=_CSV_TOO, name="invoices.upcoming")
async def upcoming_invoice(
    tenant_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    principal: BillingRead,
    fmt: FormatQuery = None,
) -> InvoiceOut | Response:
    """This month's invoice as it stands now (a live draft: it changes as usage lands)."""
    await TenantRepository(session, principal).get_or_404(tenant_id)
    doc = await service.upcoming_now(session, tenant_id)
    return _respond(request, fmt, doc)


@router.get("/{number}", response_model=InvoiceOut, responses=_CSV_TOO, name="invoices.get")
async def get_invoice(
    tenant_id: uuid.UUID,
    number: str,
    request: Request,
    session: SessionDep,
    principal: BillingRead,
    fmt: FormatQuery = None,
) -> InvoiceOut | Response:
    await TenantRepository(session, principal).get_or_404(tenant_id)
    invoice = await service.invoice_by_number(session, tenant_id, number)
    if invoice is None:
        raise NotFound(f"invoice {number} not found for tenant {tenant_id}")
    return _respond(request, fmt, service.doc_of(invoice))


@router.post("/{period}/finalize", response_model=InvoiceOut, name="invoices.finalize")
async def finalize_invoice(
    tenant_id: uuid.UUID,
    period: str,
    session: SessionDep,
    principal: BillingWrite,
    audit: AuditDep,
) -> InvoiceOut:
    """Finalize a month that has ended now, without waiting for the grace period.
    Idempotent: a month already finalized returns its invoice unchanged."""
    await TenantRepository(session, principal).get_or_404(tenant_id)
    return to_out(await service.finalize_requested(session, audit, tenant_id, period))
