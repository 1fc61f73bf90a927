"""Usage ledger: hourly counters per tenant and meter, applied batches, billable event ids."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from platform_core.models.base import Base, UTCDateTime, utcnow


class Meter(StrEnum):
    API_REQUESTS = "api_requests"
    BYTES_IN = "bytes_in"
    BYTES_OUT = "bytes_out"
    MESSAGES = "messages"


class UsageCounter(Base):
    __tablename__ = "usage_counters"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    meter: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Start of the UTC hour the usage belongs to.
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    quantity: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageBatch(Base):
    """A usage batch already applied: its id makes re-applying it a no-op."""

    __tablename__ = "usage_batches"

    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(128))
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BillableEvent(Base):
    """A billable event by its natural id (a message's event_id): counted once, ever."""

    __tablename__ = "billable_events"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    meter: Mapped[str] = mapped_column(String(32), primary_key=True)
    natural_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
