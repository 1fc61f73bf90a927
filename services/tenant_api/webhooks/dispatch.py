"""The webhook pipeline's sync half, run by Celery tasks (tenant_api.webhooks.tasks):

1. ``collect``: context events (their own outbox, ``context_events``) become webhook events,
   and every event not yet fanned out gets one delivery per matching enabled endpoint — in
   one transaction, so an event is fanned out exactly once.
2. ``due``: pending deliveries that are due and held by no live sender are put on the queue
   (the first attempt, scheduled retries, and a delivery whose worker was killed mid-send once
   its lease lapsed: at-least-once, with the same ``webhook-id``).
3. ``deliver``: take the lease (``claim``), ``send``, and ``settle``: record the attempt and
   what happens next (success, the next retry from the schedule, or failure; 410 or failing
   too long disables the endpoint). The outcome is written only if the delivery is still as
   it was claimed: a replay that landed while the message was in flight moved its due time,
   so the replay wins and the delivery is sent again, after the send in flight.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from platform_core import webhook_events
from platform_core.audit import add_event
from platform_core.crypto import SecretBox
from platform_core.db import task_session
from platform_core.models import (
    AttemptOutcome,
    DeliveryState,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    utcnow,
)
from platform_core.settings import Settings
from tenant_api.webhooks import sender
from tenant_api.webhooks.repository import DispatchRepository

log = logging.getLogger(__name__)

BATCH = 500
# Answers after which the endpoint asked us to slow down: its Retry-After is honoured.
_BACK_OFF = frozenset({429, 502, 503, 504})
_ACTOR = "system:webhooks"


def matches(endpoint: WebhookEndpoint, event: WebhookEvent) -> bool:
    """An operator endpoint (no tenant) hears every tenant and the platform; a tenant's
    endpoint only its tenant."""
    if event.type not in endpoint.event_types:
        return False
    return endpoint.tenant_id is None or endpoint.tenant_id == event.tenant_id


def _copy_context_events(repo: DispatchRepository, now: datetime) -> None:
    rows = repo.undelivered_context_events(BATCH)
    taken = repo.natural_ids_taken([f"context:{row.id}" for row in rows])
    for row in rows:
        natural_id = f"context:{row.id}"
        if natural_id not in taken:
            # Thin: ids and state; the message itself is read through the tenant's homeserver.
            data = {k: v for k, v in row.payload.items() if k != "content"}
            data.update({"tenant_id": str(row.tenant_id), "context_id": str(row.context_id)})
            webhook_events.record(
                repo.session,
                row.kind,
                row.tenant_id,
                data,
                natural_id=natural_id,
                occurred_at=row.occurred_at,
            )
        row.delivered_at = now


def collect(now: datetime) -> list[uuid.UUID]:
    """Fan out what happened since the last run; the ids of the new deliveries."""
    with task_session() as session:
        repo = DispatchRepository(session)
        _copy_context_events(repo, now)
        session.flush()
        events = repo.events_to_fan_out(BATCH)
        endpoints = repo.enabled_endpoints() if events else []
        created: list[WebhookDelivery] = []
        for event in events:
            for endpoint in endpoints:
                if matches(endpoint, event):
                    delivery = WebhookDelivery(
                        id=uuid.uuid4(),
                        endpoint_id=endpoint.id,
                        event_id=event.id,
                        message_id=webhook_events.message_id(event.id),
                        state=DeliveryState.PENDING,
                        next_attempt_at=now,
                        enqueued_at=now,
                    )
                    repo.add(delivery)
                    created.append(delivery)
            event.fanned_out_at = now
        return [d.id for d in created]


def due(now: datetime, settings: Settings) -> list[uuid.UUID]:
    with task_session() as session:
        lease = timedelta(seconds=settings.webhook_lease_ttl_s)
        return DispatchRepository(session).due_deliveries(now, lease, BATCH)


@dataclass(frozen=True)
class Claim:
    """A delivery a sender holds: the message, and the row as it was claimed (the lease taken,
    the due time), which the result is written against."""

    delivery_id: uuid.UUID
    url: str
    message_id: str
    body: bytes
    secrets: list[str]
    lease_until: datetime
    due_at: datetime


def claim(delivery_id: uuid.UUID, settings: Settings) -> Claim | None:
    """The message to send, with the delivery's lease taken; None if it is not ours to send
    (done, not due, held by another sender) or its endpoint is gone or disabled."""
    now = utcnow()
    box = SecretBox(settings.require_secret_key())
    with task_session() as session:
        repo = DispatchRepository(session)
        if not repo.claim(delivery_id, now, timedelta(seconds=settings.webhook_lease_ttl_s)):
            return None
        delivery = repo.delivery(delivery_id)
        assert delivery is not None
        endpoint = repo.endpoint(delivery.endpoint_id)
        event = repo.event(delivery.event_id)
        if endpoint is None or event is None or not endpoint.enabled:
            delivery.state = DeliveryState.FAILED
            delivery.last_error = "the endpoint is disabled"
            delivery.next_attempt_at = None
            delivery.lease_until = None
            return None
        secrets = [box.decrypt(endpoint.secret_encrypted)]
        if (
            endpoint.previous_secret_encrypted
            and endpoint.previous_secret_expires_at
            and endpoint.previous_secret_expires_at > now
        ):
            secrets.append(box.decrypt(endpoint.previous_secret_encrypted))
        assert delivery.lease_until is not None and delivery.next_attempt_at is not None
        return Claim(
            delivery_id=delivery.id,
            url=endpoint.url,
            message_id=delivery.message_id,
            body=webhook_events.body_of(event),
            secrets=secrets,
            lease_until=delivery.lease_until,
            due_at=delivery.next_attempt_at,
        )


def retry_delay(attempts: int, result: sender.SendResult, settings: Settings) -> float | None:
    """Seconds until the next attempt after ``attempts`` attempts, None when the schedule is
    spent. Jittered; an endpoint that asked to slow down (429, 502, 503, 504 with
    Retry-After) gets at least what it asked for."""
    schedule = settings.webhook_retry_schedule_s
    if attempts - 1 >= len(schedule):
        return None
    jitter = settings.webhook_retry_jitter
    delay = schedule[attempts - 1] * random.uniform(1 - jitter, 1 + jitter)  # noqa: S311
    if result.status_code in _BACK_OFF and result.retry_after_s is not None:
        delay = max(delay, result.retry_after_s)
    return delay


def disable(session: Session, endpoint: WebhookEndpoint, reason: str, now: datetime) -> None:
    """The platform stops sending to ``endpoint``: recorded in the audit log, and announced as
    a ``webhook_endpoint.disabled`` event (to the owner's other endpoints, and in the API)."""
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    add_event(
        session,
        actor=_ACTOR,
        action="webhook_endpoint.disable",
        target_type="webhook_endpoint",
        target_id=endpoint.id,
        request_id=f"webhooks:{endpoint.id}",
        tenant_id=endpoint.tenant_id,
        details={"reason": reason, "url": endpoint.url},
    )
    webhook_events.record(
        session,
        webhook_events.ENDPOINT_DISABLED,
        endpoint.tenant_id,
        {
            "endpoint_id": str(endpoint.id),
            "tenant_id": str(endpoint.tenant_id) if endpoint.tenant_id else None,
            "url": endpoint.url,
            "reason": reason,
        },
        occurred_at=now,
    )
    log.warning("webhook endpoint %s disabled: %s", endpoint.id, reason)


def settle(claimed: Claim, result: sender.SendResult, settings: Settings) -> str:
    """Record the attempt ``claimed`` made and what happens next: ``succeeded``, ``retry``,
    ``failed``; ``replayed`` when the delivery was replayed while the message was in flight
    (or claimed anew after this sender's lease lapsed): the attempt counts, but the newer
    request decides what happens next, so a replay is never overwritten by an older send's
    result; ``gone`` when the delivery was deleted meanwhile (with its endpoint)."""
    now = utcnow()
    with task_session() as session:
        repo = DispatchRepository(session)
        delivery = repo.delivery(claimed.delivery_id)
        if delivery is None:
            return "gone"
        endpoint = repo.endpoint(delivery.endpoint_id)
        assert endpoint is not None
        attempts = delivery.attempts + 1
        repo.add(
            WebhookAttempt(
                delivery_id=delivery.id,
                attempted_at=now,
                outcome=AttemptOutcome.SUCCEEDED if result.succeeded else AttemptOutcome.FAILED,
                response_code=result.status_code,
                latency_ms=result.latency_ms,
                error=result.error,
            )
        )
        outcome, values = _next_step(session, endpoint, attempts, result, settings, now)
        if repo.settle(claimed.delivery_id, claimed.lease_until, claimed.due_at, values):
            return outcome
        repo.count_attempt(claimed.delivery_id, claimed.lease_until, attempts, result.error)
        return "replayed"


def _next_step(
    session: Session,
    endpoint: WebhookEndpoint,
    attempts: int,
    result: sender.SendResult,
    settings: Settings,
    now: datetime,
) -> tuple[str, dict[str, object]]:
    """What the attempt means for the endpoint (healthy again, failing, disabled) and for the
    delivery: the outcome and the delivery's new values."""
    done: dict[str, object] = {"attempts": attempts, "lease_until": None}
    if result.succeeded:
        endpoint.failing_since = None
        return "succeeded", {
            **done,
            "state": DeliveryState.SUCCEEDED,
            "next_attempt_at": None,
            "last_error": None,
        }
    done["last_error"] = result.error
    endpoint.failing_since = endpoint.failing_since or now
    if endpoint.enabled and result.status_code == 410:
        disable(session, endpoint, "the endpoint answered 410 Gone", now)
    elif endpoint.enabled and (now - endpoint.failing_since).total_seconds() >= (
        settings.webhook_disable_after_s
    ):
        disable(
            session,
            endpoint,
            f"every delivery failed since {endpoint.failing_since.isoformat()}",
            now,
        )
    delay = retry_delay(attempts, result, settings) if endpoint.enabled else None
    if delay is None:
        return "failed", {**done, "state": DeliveryState.FAILED, "next_attempt_at": None}
    return "retry", {**done, "next_attempt_at": now + timedelta(seconds=delay)}


def send(claimed: Claim, settings: Settings) -> sender.SendResult:
    """One POST of the claimed message, signed now."""
    timestamp = int(time.time())
    headers = {
        "webhook-id": claimed.message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhook_events.signature_header(
            claimed.secrets, claimed.message_id, timestamp, claimed.body
        ),
    }
    return sender.send(claimed.url, headers, claimed.body, settings)


# A delivery replayed while in flight is sent again by the same task, at most this often in
# a row (a later replay is left to its own task and the sweeper).
_MAX_SENDS = 3


def deliver(delivery_id: uuid.UUID, settings: Settings) -> str:
    """Attempts at one delivery: one, or one more after each replay that landed while the
    message was in flight (a no-op for a delivery not ours to send)."""
    outcome = "skipped"
    for _ in range(_MAX_SENDS):
        claimed = claim(delivery_id, settings)
        if claimed is None:
            return outcome
        outcome = settle(claimed, send(claimed, settings), settings)
        if outcome != "replayed":
            return outcome
    return outcome
