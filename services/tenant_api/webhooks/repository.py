"""All SQL of webhooks: endpoints, deliveries and events as a principal sees them (tenant
endpoints scoped like every tenant object; operator endpoints only to platform-wide
principals), and the dispatcher's and sender's rows (unscoped: the platform acts)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, and_, case, delete, func, or_, select, update

from platform_core.models import (
    ContextEvent,
    DeliveryState,
    Plan,
    Tenant,
    TenantStatus,
    UsageCounter,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from tenant_api.kit.repository import Repository, SyncRepository, keyset_page


def _after_event(after: tuple[datetime, uuid.UUID]) -> ColumnElement[bool]:
    """Events after the cursor in (occurred_at, id) order."""
    occurred_at, row_id = after
    return or_(
        WebhookEvent.occurred_at > occurred_at,
        and_(WebhookEvent.occurred_at == occurred_at, WebhookEvent.id > row_id),
    )


class WebhookRepository(Repository):
    def _endpoints(self) -> Select:  # type: ignore[type-arg]
        assert self.principal is not None
        statement = select(WebhookEndpoint)
        if self.principal.platform_wide:
            return statement
        # A tenant's principal sees its tenant's endpoints, never the operators'.
        return self.scoped(statement, WebhookEndpoint.tenant_id)

    async def tenant_visible(self, tenant_id: uuid.UUID) -> bool:
        """The tenant exists, is not deleted, and the principal may see it."""
        statement = self.scoped(select(Tenant.id)).where(
            Tenant.id == tenant_id, Tenant.status != TenantStatus.DELETED
        )
        return (await self.session.scalars(statement)).one_or_none() is not None

    async def get_endpoint(self, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
        statement = self._endpoints().where(WebhookEndpoint.id == endpoint_id)
        return (await self.session.scalars(statement)).one_or_none()

    async def endpoints_page(
        self, *, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[WebhookEndpoint]:
        statement = keyset_page(self._endpoints(), WebhookEndpoint, after, limit)
        return list((await self.session.scalars(statement)).all())

    async def add(self, row: WebhookEndpoint) -> None:
        self.session.add(row)
        await self.session.flush()

    async def delete_endpoint(self, endpoint: WebhookEndpoint) -> None:
        deliveries = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint.id)
        await self.session.execute(
            delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries))
        )
        await self.session.execute(
            delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
        )
        await self.session.delete(endpoint)
        await self.session.flush()

    async def deliveries_page(
        self, endpoint_id: uuid.UUID, *, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[tuple[WebhookDelivery, str]]:
        statement = (
            select(WebhookDelivery, WebhookEvent.type)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
        )
        statement = keyset_page(statement, WebhookDelivery, after, limit)
        return [(d, t) for d, t in (await self.session.execute(statement)).all()]

    async def attempts_of(self, delivery_ids: list[uuid.UUID]) -> list[WebhookAttempt]:
        if not delivery_ids:
            return []
        statement = (
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(delivery_ids))
            .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
        )
        return list((await self.session.scalars(statement)).all())

    async def get_delivery(
        self, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
    ) -> WebhookDelivery | None:
        statement = select(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint_id
        )
        return (await self.session.scalars(statement)).one_or_none()

    async def replay(self, endpoint_id: uuid.UUID, delivery_id: uuid.UUID, now: datetime) -> bool:
        """Make the delivery due now, whatever a sender in flight writes next. Every column
        is set in the statement (an ORM flush would leave out ``state`` when it read
        ``pending``, and a send finishing meanwhile could then keep its ``succeeded``); the new
        due time tells that sender its result no longer decides (DispatchRepository.settle)."""
        result = await self.session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint_id)
            .values(state=DeliveryState.PENDING, next_attempt_at=now, enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def events_page(
        self,
        *,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
        event_type: str | None,
    ) -> list[WebhookEvent]:
        assert self.principal is not None
        statement = select(WebhookEvent)
        if not self.principal.platform_wide:
            statement = self.scoped(statement, WebhookEvent.tenant_id)
        if event_type is not None:
            statement = statement.where(WebhookEvent.type == event_type)
        if after is not None:
            statement = statement.where(_after_event(after))
        statement = statement.order_by(WebhookEvent.occurred_at, WebhookEvent.id).limit(limit)
        return list((await self.session.scalars(statement)).all())


class DispatchRepository(SyncRepository):
    """The dispatcher's and the sender's SQL."""

    def undelivered_context_events(self, limit: int) -> list[ContextEvent]:
        statement = (
            select(ContextEvent)
            .where(ContextEvent.delivered_at.is_(None))
            .order_by(ContextEvent.occurred_at, ContextEvent.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(self.session.scalars(statement).all())

    def natural_ids_taken(self, natural_ids: Sequence[str]) -> set[str]:
        if not natural_ids:
            return set()
        statement = select(WebhookEvent.natural_id).where(
            WebhookEvent.natural_id.in_(list(natural_ids))
        )
        return {n for n in self.session.scalars(statement).all() if n is not None}

    def events_to_fan_out(self, limit: int) -> list[WebhookEvent]:
        statement = (
            select(WebhookEvent)
            .where(WebhookEvent.fanned_out_at.is_(None))
            .order_by(WebhookEvent.occurred_at, WebhookEvent.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(self.session.scalars(statement).all())

    def enabled_endpoints(self) -> list[WebhookEndpoint]:
        statement = select(WebhookEndpoint).where(WebhookEndpoint.enabled.is_(True))
        return list(self.session.scalars(statement).all())

    def add(self, row: object) -> None:
        self.session.add(row)

    def due_deliveries(
        self, now: datetime, requeue_after: timedelta, limit: int
    ) -> list[uuid.UUID]:
        """Pending deliveries that are due, not held by a live sender, and not put on the
        queue within the last lease (their message may still be waiting there)."""
        statement = (
            select(WebhookDelivery)
            .where(
                WebhookDelivery.state == DeliveryState.PENDING,
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
                or_(
                    WebhookDelivery.enqueued_at.is_(None),
                    WebhookDelivery.enqueued_at < now - requeue_after,
                ),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = list(self.session.scalars(statement).all())
        for row in rows:
            row.enqueued_at = now
        return [row.id for row in rows]

    def claim(self, delivery_id: uuid.UUID, now: datetime, lease: timedelta) -> bool:
        """Take the delivery's lease if it is due and nobody holds it (one sender at a time,
        however many copies of its task run)."""
        result = self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.state == DeliveryState.PENDING,
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
            )
            .values(lease_until=now + lease)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def delivery(self, delivery_id: uuid.UUID) -> WebhookDelivery | None:
        return self.session.get(WebhookDelivery, delivery_id, with_for_update=True)

    def settle(
        self,
        delivery_id: uuid.UUID,
        lease_until: datetime,
        due_at: datetime,
        values: dict[str, object],
    ) -> bool:
        """Write a send's outcome if the delivery is still as the sender claimed it: its
        lease, and its due time (a replay moves it). False: something newer decides."""
        result = self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.lease_until == lease_until,
                WebhookDelivery.next_attempt_at == due_at,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def count_attempt(
        self, delivery_id: uuid.UUID, lease_until: datetime, attempts: int, error: str | None
    ) -> None:
        """A send whose outcome no longer decides (``settle`` said so) still counts, and its
        lease, if still held, is given up so the replay can be sent."""
        values: dict[str, object] = {
            "attempts": attempts,
            "lease_until": case(
                (WebhookDelivery.lease_until == lease_until, None),
                else_=WebhookDelivery.lease_until,
            ),
        }
        if error is not None:
            values["last_error"] = error
        self.session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )

    def endpoint(self, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
        return self.session.get(WebhookEndpoint, endpoint_id, with_for_update=True)

    def event(self, event_id: uuid.UUID) -> WebhookEvent | None:
        return self.session.get(WebhookEvent, event_id)

    def pending_of_endpoint(self, endpoint_id: uuid.UUID) -> list[WebhookDelivery]:
        statement = select(WebhookDelivery).where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.state == DeliveryState.PENDING,
        )
        return list(self.session.scalars(statement).all())

    def month_usage(self, month_start: datetime) -> list[tuple[uuid.UUID, str, int, Plan]]:
        """Each live tenant's usage per meter since ``month_start``, with its plan."""
        total = func.sum(UsageCounter.quantity)
        statement = (
            select(UsageCounter.tenant_id, UsageCounter.meter, total, Plan)
            .join(Tenant, Tenant.id == UsageCounter.tenant_id)
            .join(Plan, Plan.id == Tenant.plan_id)
            .where(
                UsageCounter.period_start >= month_start,
                Tenant.status.in_([TenantStatus.ACTIVE, TenantStatus.SUSPENDED]),
            )
            .group_by(UsageCounter.tenant_id, UsageCounter.meter, Plan.id)
        )
        return [(t, m, int(q or 0), p) for t, m, q, p in self.session.execute(statement).all()]


class RetentionRepository(SyncRepository):
    """The retention sweep's SQL: each call deletes one bounded batch, rows a concurrent
    sender or dispatcher holds are skipped (the next run takes them)."""

    _ENDED = (DeliveryState.SUCCEEDED, DeliveryState.FAILED)

    def delete_ended_deliveries(self, before: datetime, limit: int) -> tuple[int, int]:
        """Deliveries that ended before ``before``, with their attempts: (deliveries,
        attempts). A pending delivery (due, retrying, replayed) is never one of them."""
        ids = list(
            self.session.scalars(
                select(WebhookDelivery.id)
                .where(WebhookDelivery.state.in_(self._ENDED), WebhookDelivery.updated_at < before)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
        )
        if not ids:
            return 0, 0
        attempts = self.session.execute(
            delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids))
        )
        deliveries = self.session.execute(
            delete(WebhookDelivery).where(
                WebhookDelivery.id.in_(ids), WebhookDelivery.state.in_(self._ENDED)
            )
        )
        return deliveries.rowcount, attempts.rowcount  # type: ignore[attr-defined]

    def delete_fanned_out_events(
        self, before: datetime, keep_type_since: dict[str, datetime], limit: int
    ) -> int:
        """Events fanned out before ``before`` with no delivery left. ``keep_type_since``:
        events of a type that occurred since a time are kept whatever their age (their natural
        id still stops a second announcement, as a usage threshold's within its month)."""
        has_delivery = (
            select(WebhookDelivery.id).where(WebhookDelivery.event_id == WebhookEvent.id).exists()
        )
        statement = select(WebhookEvent.id).where(
            WebhookEvent.fanned_out_at < before, ~has_delivery
        )
        for event_type, since in keep_type_since.items():
            statement = statement.where(
                or_(WebhookEvent.type != event_type, WebhookEvent.occurred_at < since)
            )
        ids = list(
            self.session.scalars(statement.limit(limit).with_for_update(skip_locked=True)).all()
        )
        if not ids:
            return 0
        result = self.session.execute(delete(WebhookEvent).where(WebhookEvent.id.in_(ids)))
        return result.rowcount  # type: ignore[attr-defined]

    def delete_copied_context_events(self, before: datetime, limit: int) -> int:
        """Context outbox rows copied into webhook events before ``before``."""
        ids = list(
            self.session.scalars(
                select(ContextEvent.id)
                .where(ContextEvent.delivered_at < before)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
        )
        if not ids:
            return 0
        result = self.session.execute(delete(ContextEvent).where(ContextEvent.id.in_(ids)))
        return result.rowcount  # type: ignore[attr-defined]
