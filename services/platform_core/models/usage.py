"""Usage ledger: hourly counters per tenant and meter, applied batches, billable event ids,
and the reconciliation of billed usage against each homeserver's own records."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from platform_core.models.base import Base, UTCDateTime, UUIDPk, utcnow


class Meter(StrEnum):
    API_REQUESTS = "api_requests"
    BYTES_IN = "bytes_in"
    BYTES_OUT = "bytes_out"
    MESSAGES = "messages"
    MEDIA_BYTES = "media_bytes"
    MEDIA_EGRESS_BYTES = "media_egress_bytes"
    CALLS = "calls"
    ACTIVE_USERS = "active_users"


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
    """A billable event by its natural id, counted once ever: a message's or call's event_id,
    an upload's mxc URI (quantity = bytes), a monthly active user ("2026-11|@alice:acme")."""

    __tablename__ = "billable_events"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    meter: Mapped[str] = mapped_column(String(32), primary_key=True)
    natural_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    quantity: Mapped[int] = mapped_column(BigInteger, default=1)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UsageReconciliation(UUIDPk, Base):
    """One comparison of a billed meter with the homeserver's own count (drift = hs − billed)."""

    __tablename__ = "usage_reconciliations"
    __table_args__ = (Index("ix_usage_reconciliations_tenant_checked", "tenant_id", "checked_at"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    meter: Mapped[str] = mapped_column(String(32))
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    billed: Mapped[int] = mapped_column(BigInteger)
    homeserver: Mapped[int] = mapped_column(BigInteger)
    drift: Mapped[int] = mapped_column(BigInteger)
