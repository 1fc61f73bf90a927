"""Finalized invoices and their lines (immutable once written), and the gap-free numbering."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from platform_core.models.base import Base, UTCDateTime, UUIDPk, utcnow


class InvoiceStatus(StrEnum):
    DRAFT = "draft"  # only ever computed live, never stored
    FINALIZED = "finalized"


class Invoice(UUIDPk, Base):
    __tablename__ = "invoices"
    __table_args__ = (UniqueConstraint("tenant_id", "period", name="uq_invoices_tenant_period"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    period: Mapped[str] = mapped_column(String(7))  # "YYYY-MM", a UTC calendar month
    number: Mapped[str] = mapped_column(String(32), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=InvoiceStatus.FINALIZED.value)
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[int] = mapped_column(BigInteger)
    # The plan terms each segment was rated with: late usage is re-rated with these, so a
    # later price change never shows up as an adjustment.
    terms: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    finalized_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    lines: Mapped[list[InvoiceLine]] = relationship(lazy="raise", order_by="InvoiceLine.position")


class InvoiceLine(UUIDPk, Base):
    __tablename__ = "invoice_lines"
    __table_args__ = (UniqueConstraint("invoice_id", "position", name="uq_invoice_lines_position"),)

    invoice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("invoices.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # base_fee | usage | adjustment
    description: Mapped[str] = mapped_column(String(300))
    meter: Mapped[str | None] = mapped_column(String(32), default=None)
    quantity: Mapped[int] = mapped_column(BigInteger)
    included: Mapped[int] = mapped_column(BigInteger)
    unit_price: Mapped[int] = mapped_column(BigInteger)
    per: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    plan: Mapped[str | None] = mapped_column(String(64), default=None)
    first_day: Mapped[int | None] = mapped_column(Integer, default=None)
    last_day: Mapped[int | None] = mapped_column(Integer, default=None)
    adjusts_period: Mapped[str | None] = mapped_column(String(7), default=None)


class InvoiceCounter(Base):
    """Next invoice number; taken with UPDATE … RETURNING in the finalizing transaction, so
    numbers are sequential without gaps (a rolled-back finalization gives its number back)."""

    __tablename__ = "invoice_counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    next_value: Mapped[int] = mapped_column(BigInteger)
