"""Webhook retention (C3_WEBHOOK_RETENTION_DAYS): the sweep deletes deliveries that ended
long ago with their attempts, events fanned out long ago with no delivery left, and context
outbox rows copied long ago, in bounded batches, and never anything still due."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

from platform_core import webhook_events
from platform_core.db import task_session
from platform_core.models import (
    ContextEvent,
    DeliveryState,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from platform_core.settings import get_settings
from tenant_api.webhooks import dispatch, retention
from tests.helpers.factories import add_open_context, make_tenant
from tests.helpers.webhooks import Receiver, fan_out_everything

OLD = timedelta(days=40)  # past the default 30 days


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def _event(tenant_id: uuid.UUID, event_type: str = "tenant.active", **row: object) -> uuid.UUID:
    with task_session() as session:
        event = webhook_events.record(session, event_type, tenant_id, {"n": uuid.uuid4().hex})
        for name, value in row.items():
            setattr(event, name, value)
        session.flush()
        return event.id


def _delivery_of(event_id: uuid.UUID, endpoint_id: str) -> uuid.UUID:
    """The delivery of ``event_id`` to this test's endpoint (operator endpoints that earlier
    tests left may hear the same event)."""
    with task_session() as session:
        return session.scalars(
            select(WebhookDelivery.id).where(
                WebhookDelivery.event_id == event_id,
                WebhookDelivery.endpoint_id == uuid.UUID(endpoint_id),
            )
        ).one()


def _existing(model: type, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    with task_session() as session:
        return set(session.scalars(select(model.id).where(model.id.in_(ids))).all())  # type: ignore[attr-defined]


async def test_retention_deletes_what_ended_long_ago_and_nothing_still_due(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    settings = get_settings()
    assert settings.webhook_retention_days == 30
    now = datetime.now(UTC)
    with task_session() as session:  # endpoints earlier tests left would hear these events too
        session.execute(update(WebhookEndpoint).values(enabled=False))
    tenant_id = make_tenant()
    created = await api.post(
        "/v1/webhook-endpoints",
        json={"url": receiver.url, "event_types": ["tenant.active"], "tenant_id": str(tenant_id)},
    )
    endpoint_id = created.json()["id"]
    ok, failed, due, recent = (_event(tenant_id) for _ in range(4))
    nobody = _event(tenant_id, "tenant.deleted")  # no endpoint hears it: no delivery
    fan_out_everything(now)
    for event_id in (ok, failed, due, recent):
        assert dispatch.deliver(_delivery_of(event_id, endpoint_id), settings) == "succeeded"
    long_ago = now - OLD
    with task_session() as session:
        for event_id in (ok, failed, due, nobody):
            event = session.get(WebhookEvent, event_id)
            assert event is not None
            event.occurred_at = event.fanned_out_at = long_ago
        for event_id in (ok, failed, due):
            delivery = session.get(WebhookDelivery, _delivery_of(event_id, endpoint_id))
            assert delivery is not None
            delivery.updated_at = long_ago
            if event_id == failed:  # its retries ran out long ago
                delivery.state = DeliveryState.FAILED
            if event_id == due:  # replayed, or retrying: still due
                delivery.state = DeliveryState.PENDING
                delivery.next_attempt_at = now + timedelta(minutes=5)
    waiting = _event(tenant_id, occurred_at=long_ago)  # old, but not fanned out yet
    deliveries = {e: _delivery_of(e, endpoint_id) for e in (ok, failed, due, recent)}

    with task_session() as session:  # the contexts' outbox
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        context, _ = add_open_context(session, tenant_id, tenant.server_name)
        rows = {
            name: ContextEvent(
                tenant_id=tenant_id,
                context_id=context.id,
                kind="context.message",
                natural_id=f"${name}-{uuid.uuid4().hex}",
                occurred_at=long_ago,
                delivered_at=delivered,
            )
            for name, delivered in (("copied", long_ago), ("fresh", now), ("pending", None))
        }
        session.add_all(rows.values())
        session.flush()
        context_rows = {name: row.id for name, row in rows.items()}

    counts = retention.prune(now, settings, batch=2)  # several batches

    assert counts["deliveries"] >= 2 and counts["events"] >= 3 and counts["context_events"] >= 1
    assert _existing(WebhookDelivery, list(deliveries.values())) == {
        deliveries[due],
        deliveries[recent],
    }
    with task_session() as session:
        attempts = session.scalar(
            select(func.count())
            .select_from(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_([deliveries[ok], deliveries[failed]]))
        )
    assert attempts == 0
    assert _existing(WebhookEvent, [ok, failed, due, recent, nobody, waiting]) == {
        due,
        recent,
        waiting,
    }
    assert _existing(ContextEvent, list(context_rows.values())) == {
        context_rows["fresh"],
        context_rows["pending"],
    }
    # What the integrator sees: the kept deliveries, and the due one is still sent.
    listed = (await api.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries")).json()["items"]
    assert {d["id"] for d in listed} == {str(deliveries[due]), str(deliveries[recent])}
    with task_session() as session:
        row = session.get(WebhookDelivery, deliveries[due])
        assert row is not None
        row.next_attempt_at = datetime.now(UTC)
    assert dispatch.deliver(deliveries[due], settings) == "succeeded"


def test_this_months_usage_threshold_is_kept_whatever_its_age() -> None:
    """Its natural id is what stops the threshold from being announced again this month:
    deleting it early would announce it twice. (The sweep runs at a ``now`` in 2031, so it
    also clears what earlier tests of this session left settled: none of them looks again.)"""
    settings = get_settings()
    now = datetime(2031, 1, 31, 12, tzinfo=UTC)  # 30 days after the 1st: past retention
    tenant_id = make_tenant()
    this_month = _event(
        tenant_id,
        "usage.threshold",
        natural_id=f"usage.threshold:{tenant_id}:2031-01:messages:80",
        occurred_at=datetime(2031, 1, 1, 6, tzinfo=UTC),
        fanned_out_at=datetime(2031, 1, 1, 6, tzinfo=UTC),
    )
    last_month = _event(
        tenant_id,
        "usage.threshold",
        natural_id=f"usage.threshold:{tenant_id}:2030-12:messages:80",
        occurred_at=datetime(2030, 12, 31, 6, tzinfo=UTC),
        fanned_out_at=datetime(2030, 12, 31, 6, tzinfo=UTC),
    )
    other = _event(
        tenant_id,
        occurred_at=datetime(2031, 1, 1, 6, tzinfo=UTC),
        fanned_out_at=datetime(2031, 1, 1, 6, tzinfo=UTC),
    )
    retention.prune(now, settings)
    assert _existing(WebhookEvent, [this_month, last_month, other]) == {this_month}
