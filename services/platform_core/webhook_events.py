"""The webhook event catalogue, the outbox writer and the Standard Webhooks 1.0 signature.

An event is added to the session of the change that caused it (``record``), so it commits
with that change or not at all; the webhook dispatcher (tenant_api.webhooks.tasks) fans it
out to endpoints afterwards. Lifecycle transitions (platform_core.lifecycle), invoice
finalization and the usage threshold check call ``record``; context events arrive through
their own outbox (``context_events``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, object_session

from platform_core.models import (
    ContextEventKind,
    Operation,
    Tenant,
    TenantStatus,
    WebhookEvent,
    utcnow,
)

TENANT_ACTIVE = "tenant.active"
TENANT_SUSPENDED = "tenant.suspended"
TENANT_DELETED = "tenant.deleted"
OPERATION_FAILED = "operation.failed"
INVOICE_FINALIZED = "invoice.finalized"
USAGE_THRESHOLD = "usage.threshold"
ENDPOINT_DISABLED = "webhook_endpoint.disabled"

# Every type an endpoint may subscribe to, in the order the docs list them.
EVENT_TYPES: tuple[str, ...] = (
    TENANT_ACTIVE,
    TENANT_SUSPENDED,
    TENANT_DELETED,
    OPERATION_FAILED,
    INVOICE_FINALIZED,
    USAGE_THRESHOLD,
    ContextEventKind.MESSAGE.value,
    ContextEventKind.PARTICIPANT_JOINED.value,
    ContextEventKind.CLOSED.value,
    ENDPOINT_DISABLED,
)

_TENANT_EVENT = {
    TenantStatus.ACTIVE: TENANT_ACTIVE,
    TenantStatus.SUSPENDED: TENANT_SUSPENDED,
    TenantStatus.DELETED: TENANT_DELETED,
}

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24 to 64


def record(
    session: Session | AsyncSession,
    event_type: str,
    tenant_id: uuid.UUID | None,
    data: dict[str, Any],
    *,
    natural_id: str | None = None,
    occurred_at: datetime | None = None,
) -> WebhookEvent:
    """Add one event to the outbox, in ``session``'s transaction."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    event = WebhookEvent(
        tenant_id=tenant_id,
        type=event_type,
        natural_id=natural_id,
        data=data,
        occurred_at=occurred_at or utcnow(),
    )
    session.add(event)
    return event


def tenant_status_changed(tenant: Tenant) -> None:
    """The lifecycle moved ``tenant`` to a new status: the event that says so, if any, goes
    into the session the tenant was loaded with (a bare object, as in the transition table
    tests, has none and is not persisted either)."""
    event_type = _TENANT_EVENT.get(tenant.status)
    session = object_session(tenant)
    if event_type is None or session is None:
        return
    record(
        session,
        event_type,
        tenant.id,
        {"tenant_id": str(tenant.id), "slug": tenant.slug, "status": tenant.status.value},
    )


def operation_failed(op: Operation) -> None:
    session = object_session(op)
    if session is None:
        return
    record(
        session,
        OPERATION_FAILED,
        op.tenant_id,
        {
            "operation_id": str(op.id),
            "tenant_id": str(op.tenant_id),
            "kind": op.kind.value,
            "state": op.state.value,
            "attempts": op.attempts,
            "error": (op.last_error or "")[:500],
        },
    )


# Standard Webhooks 1.0 ---------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def message_id(event_id: uuid.UUID) -> str:
    """The ``webhook-id`` of an event: the same on every attempt, replay and endpoint."""
    return f"msg_{event_id.hex}"


def body_of(event: WebhookEvent) -> bytes:
    """The thin payload: what happened, when, and the ids and state to fetch more by."""
    return json.dumps(
        {
            "type": event.type,
            "timestamp": event.occurred_at.isoformat().replace("+00:00", "Z"),
            "data": event.data,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per live secret, space-separated."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets_)
