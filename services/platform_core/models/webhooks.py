"""Webhooks (Standard Webhooks 1.0): the endpoints integrators register, the outbox of events
written in the same transaction as the change that caused them, one delivery per event and
matching endpoint, and every attempt at sending it."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from platform_core.models.base import Base, Timestamps, UTCDateTime, UUIDPk, utcnow
from platform_core.models.tenancy import _enum


class DeliveryState(StrEnum):
    PENDING = "pending"  # due at next_attempt_at (or being sent while leased)
    SUCCEEDED = "succeeded"  # the endpoint answered 2xx
    FAILED = "failed"  # the retry schedule ran out, or the endpoint was disabled


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookEndpoint(UUIDPk, Timestamps, Base):
    """Where events go. ``tenant_id`` None: an operator's endpoint, which receives the events
    of every tenant and the platform's own; otherwise only that tenant's events."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_created_at_id", "created_at", "id"),)

    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id"), default=None, index=True
    )
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(500), default="")
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Why it was disabled by the platform (410, or failing for C3_WEBHOOK_DISABLE_AFTER_S).
    disabled_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    # whsec_… as a Fernet token (platform_core.crypto); the previous one, during a rotation's
    # overlap, until previous_secret_expires_at.
    secret_encrypted: Mapped[str] = mapped_column(Text)
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # First failed attempt since the last success: the endpoint is disabled when this is older
    # than C3_WEBHOOK_DISABLE_AFTER_S.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class WebhookEvent(UUIDPk, Base):
    """The outbox: one row per thing that happened, added in the transaction that made it
    happen. ``natural_id`` (when given) makes an event happen once (a usage threshold of a
    month, a context event copied from ``context_events``)."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("natural_id", name="uq_webhook_events_natural_id"),
        Index("ix_webhook_events_fanned_out_at_occurred_at", "fanned_out_at", "occurred_at"),
        Index("ix_webhook_events_tenant_id_occurred_at", "tenant_id", "occurred_at"),
    )

    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id"), default=None)
    type: Mapped[str] = mapped_column(String(64))
    natural_id: Mapped[str | None] = mapped_column(String(300), default=None)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When its deliveries were created (None: the dispatcher has not seen it yet).
    fanned_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    @property
    def created_at(self) -> datetime:
        return self.occurred_at


class WebhookDelivery(UUIDPk, Timestamps, Base):
    """One event to one endpoint. ``message_id`` is the ``webhook-id`` header: the same on
    every attempt and replay, so receivers can drop duplicates."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
        Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
        # The retention sweep (tenant_api.webhooks.retention): ended deliveries by last change.
        Index("ix_webhook_deliveries_state_updated_at", "state", "updated_at"),
        Index("ix_webhook_deliveries_endpoint_id_created_at_id", "endpoint_id", "created_at", "id"),
    )

    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_endpoints.id"))
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_events.id"))
    message_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState), default=DeliveryState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow)
    # A worker sending it holds it until then; a worker killed mid-send lets it lapse, and the
    # sweeper enqueues the delivery again.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # When it was last put on the queue (the sweeper does not enqueue it twice within a lease).
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)


class WebhookAttempt(UUIDPk, Base):
    __tablename__ = "webhook_attempts"
    __table_args__ = (
        Index("ix_webhook_attempts_delivery_id_attempted_at", "delivery_id", "attempted_at"),
    )

    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_deliveries.id"))
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    outcome: Mapped[AttemptOutcome] = mapped_column(_enum(AttemptOutcome))
    response_code: Mapped[int | None] = mapped_column(Integer, default=None)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(500), default=None)
