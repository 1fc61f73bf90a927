"""/v1/webhook-endpoints: where C3 sends signed events (Standard Webhooks 1.0), their
secrets (shown once, rotated with an overlap), deliveries and replays; /v1/webhook-events:
the events themselves, as the principal may see them."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from platform_core.errors import InvalidRequest
from platform_core.webhook_events import EVENT_TYPES
from tenant_api.deps import AuditDep, SessionDep, SettingsDep, TenantsRead, TenantsWrite
from tenant_api.kit.pagination import decode_cursor, encode_cursor
from tenant_api.webhooks import service
from tenant_api.webhooks.repository import WebhookRepository
from tenant_api.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    EndpointCreate,
    EndpointCreated,
    EndpointList,
    EndpointOut,
    EndpointUpdate,
    EventOut,
    EventPage,
    SecretRotated,
)

router = APIRouter(tags=["webhooks"])
PREFIX = "/v1/webhook-endpoints"

Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(max_length=200)]


@router.post(
    PREFIX,
    status_code=status.HTTP_201_CREATED,
    response_model=EndpointCreated,
    name="webhook_endpoints.create",
)
async def create_endpoint(
    body: EndpointCreate,
    session: SessionDep,
    settings: SettingsDep,
    principal: TenantsWrite,
    audit: AuditDep,
) -> EndpointCreated:
    """Register an endpoint. Its signing secret is in this answer only: keep it."""
    endpoint, secret = await service.create_endpoint(session, settings, principal, audit, body)
    return EndpointCreated(**service.to_out(endpoint).model_dump(), secret=secret)


@router.get(PREFIX, response_model=EndpointList, name="webhook_endpoints.list")
async def list_endpoints(
    session: SessionDep, principal: TenantsRead, limit: Limit = 50, cursor: Cursor = None
) -> EndpointList:
    rows = await WebhookRepository(session, principal).endpoints_page(
        limit=limit + 1, after=decode_cursor(cursor) if cursor else None
    )
    page = rows[:limit]
    return EndpointList(
        items=[service.to_out(e) for e in page],
        next_cursor=encode_cursor(page[-1]) if len(rows) > limit else None,
    )


@router.get(PREFIX + "/{endpoint_id}", response_model=EndpointOut, name="webhook_endpoints.get")
async def get_endpoint(
    endpoint_id: uuid.UUID, session: SessionDep, principal: TenantsRead
) -> EndpointOut:
    return service.to_out(await service.get_endpoint(session, principal, endpoint_id))


@router.patch(
    PREFIX + "/{endpoint_id}", response_model=EndpointOut, name="webhook_endpoints.update"
)
async def update_endpoint(
    endpoint_id: uuid.UUID,
    body: EndpointUpdate,
    session: SessionDep,
    settings: SettingsDep,
    principal: TenantsWrite,
    audit: AuditDep,
) -> EndpointOut:
    """Change url, event types, description or enabled (true re-enables an endpoint the
    platform disabled)."""
    endpoint = await service.update_endpoint(session, settings, principal, audit, endpoint_id, body)
    return service.to_out(endpoint)


@router.delete(
    PREFIX + "/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    name="webhook_endpoints.delete",
)
async def delete_endpoint(
    endpoint_id: uuid.UUID, session: SessionDep, principal: TenantsWrite, audit: AuditDep
) -> Response:
    await service.delete_endpoint(session, principal, audit, endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    PREFIX + "/{endpoint_id}/rotate-secret",
    response_model=SecretRotated,
    name="webhook_endpoints.rotate_secret",
)
async def rotate_secret(
    endpoint_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: TenantsWrite,
    audit: AuditDep,
) -> SecretRotated:
    """A new secret (in this answer only). Until previous_secret_expires_at every delivery
    carries a signature with each secret, so receivers can switch at their pace."""
    secret, expires = await service.rotate_secret(session, settings, principal, audit, endpoint_id)
    return SecretRotated(secret=secret, previous_secret_expires_at=expires)


@router.get(
    PREFIX + "/{endpoint_id}/deliveries",
    response_model=DeliveryPage,
    name="webhook_endpoints.deliveries.list",
)
async def list_deliveries(
    endpoint_id: uuid.UUID,
    session: SessionDep,
    principal: TenantsRead,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> DeliveryPage:
    """Each delivery with its attempts (status, response code, latency, error) and when the
    next attempt is due, oldest first."""
    rows = await service.deliveries(
        session,
        principal,
        endpoint_id,
        limit=limit + 1,
        after=decode_cursor(cursor) if cursor else None,
    )
    page = rows[:limit]
    return DeliveryPage(
        items=[out for _, out in page],
        next_cursor=encode_cursor(page[-1][0]) if len(rows) > limit else None,
    )


@router.post(
    PREFIX + "/{endpoint_id}/deliveries/{delivery_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryOut,
    name="webhook_endpoints.deliveries.replay",
)
async def replay_delivery(
    endpoint_id: uuid.UUID,
    delivery_id: uuid.UUID,
    session: SessionDep,
    principal: TenantsWrite,
    audit: AuditDep,
) -> DeliveryOut:
    """Send the delivery again now, with the same webhook-id (202: it is on its way)."""
    await service.replay(session, principal, audit, endpoint_id, delivery_id)
    rows = await service.deliveries(session, principal, endpoint_id, limit=1_000, after=None)
    return next(out for d, out in rows if d.id == delivery_id)


@router.get("/v1/webhook-events", response_model=EventPage, name="webhook_events.list")
async def list_events(
    session: SessionDep,
    principal: TenantsRead,
    type: Annotated[str | None, Query(description="Only events of this type")] = None,  # noqa: A002
    limit: Limit = 50,
    cursor: Cursor = None,
) -> EventPage:
    """What happened (the outbox the deliveries come from), oldest first: e.g.
    ``?type=webhook_endpoint.disabled`` shows which endpoints the platform disabled and why."""
    if type is not None and type not in EVENT_TYPES:
        raise InvalidRequest(f"type: not an event type; one of {', '.join(EVENT_TYPES)}")
    rows = await WebhookRepository(session, principal).events_page(
        limit=limit + 1, after=decode_cursor(cursor) if cursor else None, event_type=type
    )
    page = rows[:limit]
    return EventPage(
        items=[
            EventOut(
                id=e.id,
                type=e.type,
                tenant_id=e.tenant_id,
                occurred_at=e.occurred_at,
                data=e.data,
            )
            for e in page
        ],
        next_cursor=encode_cursor(page[-1]) if len(rows) > limit else None,
    )
