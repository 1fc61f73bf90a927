"""Tenants, their plans, their homeservers and the operations that change them."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Enum, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from platform_core.models.base import Base, Timestamps, UTCDateTime, UUIDPk


def _enum(cls: type[StrEnum]) -> Enum:
    return Enum(
        cls,
        native_enum=False,
        length=32,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class TenantStatus(StrEnum):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


class OperationKind(StrEnum):
    PROVISION = "provision"
    DEPROVISION = "deprovision"
    SUSPEND = "suspend"
    RESUME = "resume"
    RECONFIGURE = "reconfigure"  # plan limits and homeserver settings → homeserver config
    EXPORT = "export"  # a downloadable archive of the tenant's homeserver data


class OperationState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class HomeserverDesiredState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class Plan(UUIDPk, Timestamps, Base):
    __tablename__ = "plans"

    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3))
    base_fee_minor: Mapped[int] = mapped_column(BigInteger)
    # Limits that become homeserver config: max_upload_size_bytes, rc_message_per_second, ...
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Per meter: {"included": int, "unit_price": int, "per": int, "tiers": [{"up_to", "unit_price"}]}
    prices: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    is_default: Mapped[bool] = mapped_column(default=False)
    # Whether tenant admins may open their homeserver to sign-up without any verification
    # (registration "open"); operators always may. Off: anonymous sign-up is a spam magnet.
    allow_open_registration: Mapped[bool] = mapped_column(default=False)


class Tenant(UUIDPk, Timestamps, Base):
    __tablename__ = "tenants"
    # Cursor pagination walks (created_at, id).
    __table_args__ = (Index("ix_tenants_created_at_id", "created_at", "id"),)

    slug: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    server_name: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[TenantStatus] = mapped_column(_enum(TenantStatus), index=True)
    plan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("plans.id"))
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # What PATCH /v1/tenants/{id} sets beyond the plan (federation, registration, retention,
    # upload limit, TURN, OIDC) — rendered into the homeserver's config. Never holds secrets.
    homeserver_settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Secrets among those settings (TURN shared secret, OIDC client secret): a Fernet token
    # (platform_core.crypto) of a JSON object; never returned by the API.
    settings_secrets_encrypted: Mapped[str | None] = mapped_column(Text, default=None)

    plan: Mapped[Plan] = relationship(lazy="raise")


class TenantPlanChange(UUIDPk, Base):
    """The plan a tenant is on from ``effective_at`` on: the history billing prorates over."""

    __tablename__ = "tenant_plan_changes"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    plan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("plans.id"))
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Operation(UUIDPk, Timestamps, Base):
    __tablename__ = "operations"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[OperationKind] = mapped_column(_enum(OperationKind))
    state: Mapped[OperationState] = mapped_column(_enum(OperationState), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    steps_done: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Options of the request, e.g. {"purge": true} on a deprovision.
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # Every transition, in order: {"at": iso UTC, "event": "running"|"step"|"retry"|"succeeded"
    # |"failed"|..., "attempt": int, "detail": str | None} — shown by GET /v1/operations/{id}.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class Homeserver(UUIDPk, Timestamps, Base):
    __tablename__ = "homeservers"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), unique=True)
    backend: Mapped[str] = mapped_column(String(32))
    desired_state: Mapped[HomeserverDesiredState] = mapped_column(_enum(HomeserverDesiredState))
    # Loopback port of a local-backend homeserver; unique so two tenants never share one.
    port: Mapped[int | None] = mapped_column(Integer, unique=True, default=None)
    upstream_url: Mapped[str | None] = mapped_column(String(500), default=None)
    admin_user_id: Mapped[str | None] = mapped_column(String(255), default=None)
    # Fernet tokens (platform_core.crypto): never stored or logged in clear.
    admin_token_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    secrets_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    # Name of the tenant's own PostgreSQL database (C3_TENANT_DATABASE_URL); None on SQLite.
    database_name: Mapped[str | None] = mapped_column(String(63), default=None)
    # Since when the homeserver sleeps (stopped while its tenant stays active; woken by the
    # first request); None: awake (or not running because the tenant is not active).
    asleep_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ExportState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"
    EXPIRED = "expired"


class TenantExport(UUIDPk, Timestamps, Base):
    """An archive of a tenant's homeserver (database dump, media, signing key, config),
    produced by an export operation and fetched through an expiring link."""

    __tablename__ = "tenant_exports"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    operation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("operations.id"), unique=True)
    state: Mapped[ExportState] = mapped_column(_enum(ExportState))
    # Where the archive lies on the platform's storage (never shown to clients).
    path: Mapped[str | None] = mapped_column(String(1000), default=None)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
