"""Who may call the API: accounts (operators, tenant admins), refresh tokens, integrator API
keys; and what they did: idempotent request records and the audit log."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from platform_core.models.base import Base, Timestamps, UTCDateTime, UUIDPk, utcnow


class AccountRole(StrEnum):
    OPERATOR = "operator"  # platform staff: every tenant
    TENANT_ADMIN = "tenant_admin"  # one tenant: the enterprise admin portal


class Account(UUIDPk, Timestamps, Base):
    __tablename__ = "accounts"

    email: Mapped[str] = mapped_column(String(254), unique=True)  # stored lower-cased
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id
    role: Mapped[str] = mapped_column(String(32))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id"), index=True, default=None
    )
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class RefreshToken(UUIDPk, Base):
    """One refresh token (stored as an HMAC hash). Using it rotates it: the successor joins the
    same family; presenting a used token again revokes the whole family (it was stolen)."""

    __tablename__ = "refresh_tokens"

    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    family_id: Mapped[uuid.UUID] = mapped_column(index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ApiKey(UUIDPk, Base):
    """An integrator key: ``c3k_<key id>_<secret><checksum>``, shown once, kept as an HMAC."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    # None: bound to the operator organisation (all tenants); else to one tenant.
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id"), index=True, default=None
    )
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class IdempotentRequest(Base):
    """A POST made with an ``Idempotency-Key``: replayed for 24 h to the same principal."""

    __tablename__ = "idempotent_requests"

    principal: Mapped[str] = mapped_column(String(100), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # method, path and body
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)  # None: in progress
    content_type: Mapped[str | None] = mapped_column(String(100), default=None)
    location: Mapped[str | None] = mapped_column(String(500), default=None)
    body: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class AuditEvent(UUIDPk, Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_tenant_time", "tenant_id", "occurred_at"),)

    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))  # "operator:<id>", "api_key:<key id>", …
    action: Mapped[str] = mapped_column(String(64))  # e.g. tenant.create
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(100))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    request_id: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
