"""Contexts: Matrix rooms bound to a tenant's own business reference (``case-4711``), their
participants, and the outbox of what happened in them (for the webhooks to deliver)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from platform_core.models.base import Base, Timestamps, UTCDateTime, UUIDPk, utcnow
from platform_core.models.tenancy import _enum


class ContextState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class ParticipantKind(StrEnum):
    TENANT_USER = "tenant_user"  # an account of the tenant's homeserver, invited and joined
    EXTERNAL = "external"  # a room-only account in the application service's namespace


class ParticipantState(StrEnum):
    ACTIVE = "active"
    REMOVED = "removed"  # DELETE …/participants/{id}
    EXPIRED = "expired"  # its credential's time ran out (externals only)
    CLOSED = "closed"  # the context was closed


class ContextEventKind(StrEnum):
    MESSAGE = "context.message"
    PARTICIPANT_JOINED = "context.participant_joined"
    CLOSED = "context.closed"


class Context(UUIDPk, Timestamps, Base):
    __tablename__ = "contexts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "ref", name="uq_contexts_tenant_id_ref"),
        Index("ix_contexts_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    ref: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(300))
    context_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    room_id: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[ContextState] = mapped_column(_enum(ContextState), default=ContextState.OPEN)
    # Kept up to date by the application service receiver (tenant_api.contexts.appservice).
    message_count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ContextParticipant(UUIDPk, Timestamps, Base):
    __tablename__ = "context_participants"
    __table_args__ = (
        UniqueConstraint("context_id", "user_id", name="uq_context_participants_context_user"),
        # The expiry sweep: active externals whose time ran out.
        Index("ix_context_participants_status_expires_at", "status", "expires_at"),
    )

    context_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contexts.id"), index=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    kind: Mapped[ParticipantKind] = mapped_column(_enum(ParticipantKind))
    user_id: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str | None] = mapped_column(String(256), default=None)
    status: Mapped[ParticipantState] = mapped_column(
        _enum(ParticipantState), default=ParticipantState.ACTIVE
    )
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    joined_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # The external's access token (a Fernet token, platform_core.crypto), kept only to log it
    # out when the participant is cut off: Synapse files an admin-issued token under the
    # admin, so deactivating the account alone would not end it. None once logged out.
    credential_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    # When the homeserver account was deactivated (externals): None while it still works.
    cut_off_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ContextEvent(UUIDPk, Base):
    """The outbox the webhooks will deliver from: one row per thing that happened, unique by
    its natural id (a Matrix event id, or ``closed:<context id>``)."""

    __tablename__ = "context_events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "natural_id", name="uq_context_events_tenant_natural"),
        Index("ix_context_events_undelivered", "delivered_at", "occurred_at"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    context_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contexts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    natural_id: Mapped[str] = mapped_column(String(300))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class AppserviceTransaction(Base):
    """Transactions the homeserver pushed and we applied: a retried one is acknowledged and
    ignored (the application service API's idempotency is per txnId)."""

    __tablename__ = "appservice_transactions"
    __table_args__ = (PrimaryKeyConstraint("tenant_id", "txn_id"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    txn_id: Mapped[str] = mapped_column(String(255))
    events: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
