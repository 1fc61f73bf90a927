"""Response bodies of invoices. Every amount is an integer in minor units of ``currency``."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel


class InvoiceLineOut(BaseModel):
    kind: str  # base_fee | usage | adjustment
    description: str
    meter: str | None
    quantity: int
    included: int
    unit_price: int
    per: int
    amount: int
    plan: str | None
    first_day: int | None
    last_day: int | None
    adjusts_period: str | None


class InvoiceOut(BaseModel):
    tenant_id: uuid.UUID
    number: str | None  # null on a draft
    period: str
    period_start: datetime
    period_end: datetime
    status: str  # draft | finalized
    currency: str
    lines: list[InvoiceLineOut]
    total: int
    finalized_at: datetime | None


class InvoiceSummary(BaseModel):
    number: str
    period: str
    status: str
    currency: str
    total: int
    finalized_at: datetime


class InvoiceList(BaseModel):
    items: list[InvoiceSummary]
