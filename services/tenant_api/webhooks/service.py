"""Webhook endpoints as the API manages them: create (secret shown once), change, delete,
rotate the secret with an overlap, list deliveries with their attempts, replay one."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from platform_core import webhook_events
from platform_core.auth import Principal
from platform_core.celery import TaskNames
from platform_core.crypto import SecretBox
from platform_core.errors import InvalidRequest, NotFound
from platform_core.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from platform_core.outbound import OutboundRefused
from platform_core.settings import Settings
from tenant_api.kit import tasks
from tenant_api.kit.audit import AuditContext
from tenant_api.webhooks import sender
from tenant_api.webhooks.repository import WebhookRepository
from tenant_api.webhooks.schemas import (
    AttemptOut,
    DeliveryOut,
    EndpointCreate,
    EndpointOut,
    EndpointUpdate,
)


def to_out(endpoint: WebhookEndpoint, now: datetime | None = None) -> EndpointOut:
    now = now or utcnow()
    rotation = endpoint.previous_secret_expires_at
    return EndpointOut(
        id=endpoint.id,
        tenant_id=endpoint.tenant_id,
        url=endpoint.url,
        event_types=list(endpoint.event_types),
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        description=endpoint.description,
        secret_rotation_ends_at=rotation if rotation and rotation > now else None,
        failing_since=endpoint.failing_since,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


async def _check_url(url: str, settings: Settings) -> None:
    try:
        await asyncio.to_thread(sender.check_url, url, settings)
    except OutboundRefused as exc:
        raise InvalidRequest(f"url: {exc}") from None


async def _tenant_for(
    session: AsyncSession, principal: Principal, wanted: uuid.UUID | None
) -> uuid.UUID | None:
    """The tenant the new endpoint belongs to: an operator's choice (None: platform-wide), a
    tenant principal's own tenant always; a tenant it cannot see is not found."""
    if principal.platform_wide and wanted is None:
        return None
    tenant_id = wanted if principal.platform_wide else principal.tenant_id
    if wanted is not None and wanted != tenant_id:
        raise NotFound("tenant not found")
    if tenant_id is None or not await WebhookRepository(session, principal).tenant_visible(
        tenant_id
    ):
        raise NotFound("tenant not found")
    return tenant_id


async def create_endpoint(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    audit: AuditContext,
    body: EndpointCreate,
) -> tuple[WebhookEndpoint, str]:
    tenant_id = await _tenant_for(session, principal, body.tenant_id)
    await _check_url(body.url, settings)
    secret = webhook_events.new_secret()
    endpoint = WebhookEndpoint(
        tenant_id=tenant_id,
        url=body.url,
        description=body.description,
        event_types=body.event_types,
        enabled=body.enabled,
        secret_encrypted=SecretBox(settings.require_secret_key()).encrypt(secret),
    )
    await WebhookRepository(session, principal).add(endpoint)
    audit.record(
        "webhook_endpoint.create",
        "webhook_endpoint",
        endpoint.id,
        tenant_id=tenant_id,
        details={"url": body.url, "event_types": body.event_types},
    )
    return endpoint, secret


async def get_endpoint(
    session: AsyncSession, principal: Principal, endpoint_id: uuid.UUID
) -> WebhookEndpoint:
    endpoint = await WebhookRepository(session, principal).get_endpoint(endpoint_id)
    if endpoint is None:
        raise NotFound("webhook endpoint not found")
    return endpoint


async def update_endpoint(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    audit: AuditContext,
    endpoint_id: uuid.UUID,
    body: EndpointUpdate,
) -> WebhookEndpoint:
    endpoint = await get_endpoint(session, principal, endpoint_id)
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if "url" in changes:
        await _check_url(changes["url"], settings)
    for name, value in changes.items():
        setattr(endpoint, name, value)
    if changes.get("enabled") is True:
        # Re-enabled by its owner: it starts with a clean slate.
        endpoint.disabled_reason = None
        endpoint.failing_since = None
    await session.flush()
    audit.record(
        "webhook_endpoint.update",
        "webhook_endpoint",
        endpoint.id,
        tenant_id=endpoint.tenant_id,
        details={k: v for k, v in changes.items() if k != "description"},
    )
    return endpoint


async def delete_endpoint(
    session: AsyncSession, principal: Principal, audit: AuditContext, endpoint_id: uuid.UUID
) -> None:
    endpoint = await get_endpoint(session, principal, endpoint_id)
    audit.record(
        "webhook_endpoint.delete",
        "webhook_endpoint",
        endpoint.id,
        tenant_id=endpoint.tenant_id,
        details={"url": endpoint.url},
    )
    await WebhookRepository(session, principal).delete_endpoint(endpoint)


async def rotate_secret(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    audit: AuditContext,
    endpoint_id: uuid.UUID,
) -> tuple[str, datetime]:
    """A new secret; the current one keeps signing too (a second signature in the same
    header) for the overlap window, so receivers can switch without losing a message."""
    endpoint = await get_endpoint(session, principal, endpoint_id)
    box = SecretBox(settings.require_secret_key())
    secret = webhook_events.new_secret()
    expires = utcnow() + timedelta(seconds=settings.webhook_secret_overlap_s)
    endpoint.previous_secret_encrypted = endpoint.secret_encrypted
    endpoint.previous_secret_expires_at = expires
    endpoint.secret_encrypted = box.encrypt(secret)
    await session.flush()
    audit.record(
        "webhook_endpoint.rotate_secret",
        "webhook_endpoint",
        endpoint.id,
        tenant_id=endpoint.tenant_id,
        details={"previous_secret_expires_at": expires.isoformat()},
    )
    return secret, expires


def _delivery_out(
    delivery: WebhookDelivery, event_type: str, attempts: list[WebhookAttempt]
) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id,
        message_id=delivery.message_id,
        event_id=delivery.event_id,
        event_type=event_type,
        status=delivery.state.value,
        attempt_count=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        attempts=[
            AttemptOut(
                attempted_at=a.attempted_at,
                status=a.outcome.value,
                response_code=a.response_code,
                latency_ms=a.latency_ms,
                error=a.error,
            )
            for a in attempts
        ],
    )


async def deliveries(
    session: AsyncSession,
    principal: Principal,
    endpoint_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[tuple[WebhookDelivery, DeliveryOut]]:
    endpoint = await get_endpoint(session, principal, endpoint_id)
    repo = WebhookRepository(session, principal)
    rows = await repo.deliveries_page(endpoint.id, limit=limit, after=after)
    attempts = await repo.attempts_of([d.id for d, _ in rows])
    by_delivery: dict[uuid.UUID, list[WebhookAttempt]] = {}
    for attempt in attempts:
        by_delivery.setdefault(attempt.delivery_id, []).append(attempt)
    return [(d, _delivery_out(d, t, by_delivery.get(d.id, []))) for d, t in rows]


async def replay(
    session: AsyncSession,
    principal: Principal,
    audit: AuditContext,
    endpoint_id: uuid.UUID,
    delivery_id: uuid.UUID,
) -> WebhookDelivery:
    """Send the delivery once more, now, with the same ``webhook-id`` (the receiver's
    de-duplication decides whether it acts on it again)."""
    endpoint = await get_endpoint(session, principal, endpoint_id)
    repo = WebhookRepository(session, principal)
    delivery = await repo.get_delivery(endpoint.id, delivery_id)
    if delivery is None:
        raise NotFound("delivery not found")
    if not endpoint.enabled:
        raise InvalidRequest("the endpoint is disabled; enable it (PATCH enabled: true) first")
    if not await repo.replay(endpoint.id, delivery.id, utcnow()):
        raise NotFound("delivery not found")  # deleted meanwhile (retention, its endpoint)
    await session.refresh(delivery)
    audit.record(
        "webhook_delivery.replay",
        "webhook_delivery",
        delivery.id,
        tenant_id=endpoint.tenant_id,
        details={"endpoint_id": str(endpoint.id), "message_id": delivery.message_id},
    )
    tasks.enqueue(session, TaskNames.DELIVER_WEBHOOK, delivery.id)
    return delivery
