"""The permission matrix: every route of the OpenAPI schema × every kind of caller × objects
of tenant A and tenant B. The expected outcome of every cell is declared in ONE table below;
a denied call must leave the database as it was."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from platform_core import webhook_events
from platform_core.auth.tokens import issue_access_token
from platform_core.crypto import SecretBox
from platform_core.db import task_session
from platform_core.models import (
    Account,
    ApiKey,
    AuditEvent,
    Context,
    ContextParticipant,
    DeliveryState,
    ExportState,
    Invoice,
    Operation,
    OperationKind,
    OperationState,
    Plan,
    Tenant,
    TenantExport,
    TenantPlanChange,
    WebhookDelivery,
    WebhookEndpoint,
)
from platform_core.settings import get_settings
from tenant_api.exports import links
from tenant_api.invoices import tasks as invoice_tasks
from tenant_api.main import create_app
from tests.helpers.api import slug
from tests.helpers.factories import add_open_context

PASSWORD = "correct horse battery"
CALLERS = ("operator", "admin_a", "admin_b", "key_a_read", "key_a_write", "expired", "anonymous")

# Cell values: "ok" = 2xx; "ok*" = allowed (any answer but 401/403/404 and never 5xx, e.g. 409
# because the tenant has no homeserver here); "401"/"403"/"404" = refused with that status.
# Tenant-object routes give a pair: (object of tenant A, object of tenant B).
Cell = str | tuple[str, str]
U = ("401", "401")  # expired/anonymous on object routes


def row(cells: list[Cell]) -> dict[str, Cell]:
    return dict(zip(CALLERS, cells, strict=True))


MATRIX: dict[str, dict[str, Cell]] = {
    # route                                 operator      admin_a          admin_b          key_a_read       key_a_write      expired anonymous
    "POST /v1/tenants": row(["ok", "403", "403", "403", "403", "401", "401"]),
    "GET /v1/tenants": row(["ok", "ok", "ok", "ok", "ok", "401", "401"]),
    "GET /v1/tenants/{tenant_id}": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("ok", "404"), ("ok", "404"), U, U]),
    "PATCH /v1/tenants/{tenant_id}": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("403", "403"), ("ok", "404"), U, U]),
    "DELETE /v1/tenants/{tenant_id}": row([("ok", "ok"), ("403", "403"), ("403", "403"), ("403", "403"), ("403", "403"), U, U]),
    "POST /v1/tenants/{tenant_id}/suspend": row([("ok*", "ok*"), ("403", "403"), ("403", "403"), ("403", "403"), ("403", "403"), U, U]),
    "POST /v1/tenants/{tenant_id}/resume": row([("ok*", "ok*"), ("403", "403"), ("403", "403"), ("403", "403"), ("403", "403"), U, U]),
    "POST /v1/operations/{operation_id}/retry": row([("ok*", "ok*"), ("403", "403"), ("403", "403"), ("403", "403"), ("403", "403"), U, U]),
    "GET /v1/operations/{operation_id}": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("ok", "404"), ("ok", "404"), U, U]),
    "POST /v1/tenants/{tenant_id}/users": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("403", "403"), ("ok*", "404"), U, U]),
    "GET /v1/tenants/{tenant_id}/users": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("ok*", "404"), ("ok*", "404"), U, U]),
    "GET /v1/tenants/{tenant_id}/users/{username}": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("ok*", "404"), ("ok*", "404"), U, U]),
    "PATCH /v1/tenants/{tenant_id}/users/{username}": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("403", "403"), ("ok*", "404"), U, U]),
    "POST /v1/tenants/{tenant_id}/users/{username}/deactivate": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("403", "403"), ("ok*", "404"), U, U]),
    "GET /v1/tenants/{tenant_id}/usage": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("ok", "404"), ("ok", "404"), U, U]),
    "GET /v1/tenants/{tenant_id}/usage/reconciliation": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("ok", "404"), ("ok", "404"), U, U]),
    "GET /v1/tenants/{tenant_id}/invoices": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("ok", "404"), ("ok", "404"), U, U]),
    "GET /v1/tenants/{tenant_id}/invoices/upcoming": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("ok", "404"), ("ok", "404"), U, U]),
    "GET /v1/tenants/{tenant_id}/invoices/{number}": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("ok", "404"), ("ok", "404"), U, U]),
    "POST /v1/tenants/{tenant_id}/invoices/{period}/finalize": row([("ok", "ok"), ("403", "403"), ("403", "403"), ("403", "403"), ("403", "403"), U, U]),
    "POST /v1/plans": row(["ok", "403", "403", "403", "403", "401", "401"]),
    "GET /v1/plans": row(["ok", "ok", "ok", "ok", "ok", "401", "401"]),
    "GET /v1/plans/{code}": row(["ok", "ok", "ok", "ok", "ok", "401", "401"]),
    "PATCH /v1/plans/{code}": row(["ok", "403", "403", "403", "403", "401", "401"]),
    "POST /v1/accounts": row(["ok", "403", "403", "403", "403", "401", "401"]),
    # {account_id}: a tenant admin account of tenant A / B (never the caller's own).
    "GET /v1/accounts/{account_id}": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("403", "403"), ("403", "403"), U, U]),
    "POST /v1/accounts/{account_id}/disable": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("403", "403"), ("403", "403"), U, U]),
    "POST /v1/accounts/{account_id}/enable": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("403", "403"), ("403", "403"), U, U]),
    "POST /v1/accounts/{account_id}/reset-password": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("403", "403"), ("403", "403"), U, U]),
    "POST /v1/api-keys": row(["ok", "ok", "ok", "403", "ok", "401", "401"]),
    "GET /v1/api-keys": row(["ok", "ok", "ok", "403", "ok", "401", "401"]),
    "DELETE /v1/api-keys/{key_id}": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("403", "403"), ("ok", "404"), U, U]),
    "GET /v1/audit-events": row(["ok", "ok", "ok", "403", "ok", "401", "401"]),
    # Registration tokens are credentials that create accounts: users:write even to list them.
    "POST /v1/tenants/{tenant_id}/registration-tokens": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("403", "403"), ("ok*", "404"), U, U]),
    "GET /v1/tenants/{tenant_id}/registration-tokens": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("403", "403"), ("ok*", "404"), U, U]),
    "DELETE /v1/tenants/{tenant_id}/registration-tokens/{token}": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("403", "403"), ("ok*", "404"), U, U]),
    "POST /v1/tenants/{tenant_id}/export": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("403", "403"), ("ok*", "404"), U, U]),
    "GET /v1/tenants/{tenant_id}/exports": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("403", "403"), ("ok", "404"), U, U]),
    "GET /v1/tenants/{tenant_id}/exports/{export_id}": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("403", "403"), ("ok", "404"), U, U]),
    # Authorised by the link's signature alone: whoever holds a valid link downloads, with any
    # Authorization header or none (a bad signature is 404 for everyone: test_exports).
    "GET /v1/exports/{export_id}/download": row([("ok", "ok")] * len(CALLERS)),
    # Runs checks through the proxy (none runs here: they fail, the answer is still 200).
    "GET /v1/tenants/{tenant_id}/readiness": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("ok", "404"), ("ok", "404"), U, U]),
    "GET /metrics": row(["ok", "403", "403", "403", "403", "401", "401"]),
    # Contexts: read with tenants:read, changed with users:write (they create accounts). The
    # tenants here have no homeserver, so allowed writes answer 409.
    "PUT /v1/tenants/{tenant_id}/contexts/{ref}": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("403", "403"), ("ok*", "404"), U, U]),
    "GET /v1/tenants/{tenant_id}/contexts": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("ok", "404"), ("ok", "404"), U, U]),
    "GET /v1/tenants/{tenant_id}/contexts/{ref}": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("ok", "404"), ("ok", "404"), U, U]),
    "POST /v1/tenants/{tenant_id}/contexts/{ref}/participants": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("403", "403"), ("ok*", "404"), U, U]),
    "DELETE /v1/tenants/{tenant_id}/contexts/{ref}/participants/{participant_id}": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("403", "403"), ("ok*", "404"), U, U]),
    "POST /v1/tenants/{tenant_id}/contexts/{ref}/close": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("403", "403"), ("ok*", "404"), U, U]),
    "POST /v1/tenants/{tenant_id}/contexts/{ref}/messages": row([("ok*", "ok*"), ("ok*", "404"), ("404", "ok*"), ("403", "403"), ("ok*", "404"), U, U]),
    "GET /metrics/homeservers": row(["ok", "403", "403", "403", "403", "401", "401"]),
    # Operators only. No worker runs here: status still answers 200 (workers and homeservers
    # down); the tenants have no homeserver, so their logs answer 409.
    "GET /v1/status": row(["ok", "403", "403", "403", "403", "401", "401"]),
    "GET /v1/tenants/{tenant_id}/logs": row([("ok*", "ok*"), ("403", "403"), ("403", "403"), ("403", "403"), ("403", "403"), U, U]),
    # Webhooks: read with tenants:read, changed with tenants:write; a tenant's principal sees
    # its tenant's endpoints only (DELETE takes a victim endpoint, like the keys).
    "POST /v1/webhook-endpoints": row(["ok", "ok", "ok", "403", "ok", "401", "401"]),
    "GET /v1/webhook-endpoints": row(["ok", "ok", "ok", "ok", "ok", "401", "401"]),
    "GET /v1/webhook-endpoints/{endpoint_id}": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("ok", "404"), ("ok", "404"), U, U]),
    "PATCH /v1/webhook-endpoints/{endpoint_id}": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("403", "403"), ("ok", "404"), U, U]),
    "DELETE /v1/webhook-endpoints/{endpoint_id}": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("403", "403"), ("ok", "404"), U, U]),
    "POST /v1/webhook-endpoints/{endpoint_id}/rotate-secret": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("403", "403"), ("ok", "404"), U, U]),
    "GET /v1/webhook-endpoints/{endpoint_id}/deliveries": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("ok", "404"), ("ok", "404"), U, U]),
    "POST /v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/replay": row([("ok", "ok"), ("ok", "404"), ("404", "ok"), ("403", "403"), ("ok", "404"), U, U]),
    "GET /v1/webhook-events": row(["ok", "ok", "ok", "ok", "ok", "401", "401"]),
}  # fmt: skip
# Open to everyone by design: sign-in, token revocation, health.
PUBLIC = {"POST /v1/auth/token", "POST /v1/auth/revoke", "GET /healthz"}


@dataclass
class World:
    tenants: dict[str, dict[str, Any]]  # "a"/"b" -> tenant JSON
    operations: dict[str, str]
    invoices: dict[str, str]
    last_month: str
    plan_code: str
    headers: dict[str, dict[str, str]]
    victim_key: Callable[[str], str]  # a fresh key of tenant a/b to revoke
    # A ready export of tenant a/b and its download link's query.
    exports: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    # A tenant admin account of tenant a/b that no caller signs in with.
    accounts: dict[str, str] = field(default_factory=dict)
    # An open context of tenant a/b (ref case-1) and an active external participant in it.
    participants: dict[str, str] = field(default_factory=dict)
    # A webhook endpoint of tenant a/b with one delivery, and fresh ones to delete.
    webhooks: dict[str, tuple[str, str]] = field(default_factory=dict)
    victim_endpoints: dict[str, list[str]] = field(default_factory=dict)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _world(api: httpx.AsyncClient) -> World:
    tenants, operations, invoices = {}, {}, {}
    now = datetime.now(UTC)
    last_month = (now.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    for side in ("a", "b"):
        created = (
            await api.post("/v1/tenants", json={"slug": slug(), "display_name": side})
        ).json()
        tenants[side], operations[side] = created, created["operation"]["id"]
        with task_session() as session:  # it existed last month too, so that month has an invoice
            tenant = session.get(Tenant, uuid.UUID(created["id"]))
            assert tenant is not None
            tenant.created_at = now - timedelta(days=62)
            for change in session.scalars(
                select(TenantPlanChange).where(TenantPlanChange.tenant_id == tenant.id)
            ):
                change.effective_at = tenant.created_at
        invoice_id = invoice_tasks.finalize_one(uuid.UUID(created["id"]), last_month, now)
        with task_session() as session:
            invoices[side] = session.get(Invoice, invoice_id).number  # type: ignore[union-attr]
    plan_code = f"m{uuid.uuid4().hex[:8]}"
    await api.post("/v1/plans", json={"code": plan_code, "name": "M", "currency": "EUR"})

    async def admin(side: str) -> dict[str, str]:
        email = f"adm{uuid.uuid4().hex[:8]}@example.com"
        await api.post(
            "/v1/accounts",
            json={
                "email": email,
                "password": PASSWORD,
                "role": "tenant_admin",
                "tenant_id": tenants[side]["id"],
            },
        )
        tokens = await api.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": PASSWORD},
            headers={"Authorization": ""},
        )
        return bearer(tokens.json()["access_token"])

    async def key(side: str, scopes: list[str]) -> str:
        response = await api.post(
            "/v1/api-keys",
            json={"name": "m", "scopes": scopes, "tenant_id": tenants[side]["id"]},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    operator_email = f"op{uuid.uuid4().hex[:8]}@example.com"
    await api.post(
        "/v1/accounts", json={"email": operator_email, "password": PASSWORD, "role": "operator"}
    )
    operator = await api.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": operator_email, "password": PASSWORD},
        headers={"Authorization": ""},
    )
    expired, _ = issue_access_token(
        get_settings(), subject=str(uuid.uuid4()), role="operator", tenant_id=None,
        now=time.time() - 3600,
    )  # fmt: skip
    headers = {
        "operator": bearer(operator.json()["access_token"]),
        "admin_a": await admin("a"),
        "admin_b": await admin("b"),
        "key_a_read": bearer(await key("a", ["tenants:read", "usage:read", "billing:read"])),
        "key_a_write": bearer(
            await key(
                "a",
                [
                    "tenants:read",
                    "tenants:write",
                    "users:write",
                    "usage:read",
                    "billing:read",
                    "keys:write",
                    "audit:read",
                ],
            )  # fmt: skip
        ),
        "expired": bearer(expired),
        "anonymous": {"Authorization": ""},
    }
    victims: dict[str, list[str]] = {"a": [], "b": []}
    for side in ("a", "b"):
        for _ in range(len(CALLERS)):
            created = await api.post(
                "/v1/api-keys",
                json={
                    "name": "victim",
                    "scopes": ["tenants:read"],
                    "tenant_id": tenants[side]["id"],
                },
            )
            victims[side].append(created.json()["id"])
    world = World(
        tenants, operations, invoices, last_month, plan_code, headers, lambda s: victims[s].pop()
    )
    world.exports = {side: _ready_export(tenants[side]["id"]) for side in ("a", "b")}
    world.participants = {side: _open_context(tenants[side]["id"]) for side in ("a", "b")}
    world.webhooks = {side: _webhook_endpoint(tenants[side]["id"]) for side in ("a", "b")}
    world.victim_endpoints = {
        side: [_webhook_endpoint(tenants[side]["id"])[0] for _ in CALLERS] for side in ("a", "b")
    }
    for side in ("a", "b"):
        victim = await api.post(
            "/v1/accounts",
            json={
                "email": f"victim{uuid.uuid4().hex[:8]}@example.com",
                "password": PASSWORD,
                "role": "tenant_admin",
                "tenant_id": tenants[side]["id"],
            },
        )
        world.accounts[side] = victim.json()["id"]
    return world


def _ready_export(tenant_id: str) -> tuple[str, dict[str, str]]:
    """A finished export of the tenant (as the worker leaves it) and its download link."""
    settings = get_settings()
    with task_session() as session:
        operation = Operation(
            tenant_id=uuid.UUID(tenant_id),
            kind=OperationKind.EXPORT,
            state=OperationState.SUCCEEDED,
        )
        session.add(operation)
        session.flush()
        export = TenantExport(
            tenant_id=operation.tenant_id,
            operation_id=operation.id,
            state=ExportState.READY,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
        session.add(export)
        session.flush()
        path = settings.data_path / "exports" / f"{export.id}.tar.gz"  # the data dir's store
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"archive")
        export.path, export.size_bytes = f"exports/{export.id}.tar.gz", path.stat().st_size
        query = links.query(settings.require_secret_key(), export.id, export.expires_at)  # type: ignore[arg-type]
        return str(export.id), query


def _open_context(tenant_id: str) -> str:
    """Context case-1 of the tenant with one active external participant; its id."""
    with task_session() as session:
        expires_at = datetime.now(UTC) + timedelta(hours=1)
        _, participant = add_open_context(
            session, uuid.UUID(tenant_id), "perm.test", title="Case 1", expires_at=expires_at
        )
        return str(participant.id)


def _webhook_endpoint(tenant_id: str) -> tuple[str, str]:
    """A webhook endpoint of the tenant with one pending delivery; their ids."""
    with task_session() as session:
        endpoint = WebhookEndpoint(
            tenant_id=uuid.UUID(tenant_id),
            url="https://example.com/hook",
            event_types=["tenant.active"],
            secret_encrypted=SecretBox(get_settings().require_secret_key()).encrypt(
                webhook_events.new_secret()
            ),
        )
        event = webhook_events.record(
            session, "tenant.active", uuid.UUID(tenant_id), {"tenant_id": tenant_id}
        )
        session.add(endpoint)
        session.flush()
        event.fanned_out_at = event.occurred_at
        delivery = WebhookDelivery(
            endpoint_id=endpoint.id,
            event_id=event.id,
            message_id=webhook_events.message_id(event.id),
            state=DeliveryState.SUCCEEDED,
        )
        session.add(delivery)
        session.flush()
        return str(endpoint.id), str(delivery.id)


def request_for(route: str, world: World, side: str) -> tuple[str, str, dict[str, Any]]:
    method, template = route.split(" ", 1)
    tenant = world.tenants[side]
    path = (
        template.replace("{tenant_id}", tenant["id"])
        .replace("{operation_id}", world.operations[side])
        .replace("{number}", world.invoices[side])
        .replace("{period}", world.last_month)
        .replace("{code}", world.plan_code)
        .replace("{username}", "mx")
        .replace("{token}", "mx-token-1234")
        .replace("{export_id}", world.exports[side][0])
        .replace("{account_id}", world.accounts[side])
        .replace("{ref}", "case-1")
        .replace("{participant_id}", world.participants[side])
        .replace("{delivery_id}", world.webhooks[side][1])
    )
    if "{key_id}" in path:
        path = path.replace("{key_id}", world.victim_key(side))
    if route.startswith("DELETE /v1/webhook-endpoints/"):
        path = path.replace("{endpoint_id}", world.victim_endpoints[side].pop())
    path = path.replace("{endpoint_id}", world.webhooks[side][0])
    bodies: dict[str, Any] = {
        "POST /v1/tenants": {"slug": slug(), "display_name": "New"},
        "PATCH /v1/tenants/{tenant_id}": {"display_name": f"Renamed {uuid.uuid4().hex[:4]}"},
        "POST /v1/tenants/{tenant_id}/users": {"username": "mx", "password": "long-enough-pw"},
        "POST /v1/plans": {"code": f"n{uuid.uuid4().hex[:8]}", "name": "N", "currency": "EUR"},
        "PATCH /v1/plans/{code}": {"name": f"M {uuid.uuid4().hex[:4]}"},
        "PATCH /v1/tenants/{tenant_id}/users/{username}": {"displayname": "Mx"},
        "POST /v1/tenants/{tenant_id}/users/{username}/deactivate": {"erase": False},
        "POST /v1/tenants/{tenant_id}/registration-tokens": {"uses_allowed": 1},
        "POST /v1/accounts": {
            "email": f"n{uuid.uuid4().hex[:8]}@example.com",
            "password": PASSWORD,
            "role": "operator",
        },
        "POST /v1/api-keys": {"name": "n", "scopes": ["tenants:read"]},
        "POST /v1/accounts/{account_id}/reset-password": {"password": "a new long password"},
        "PUT /v1/tenants/{tenant_id}/contexts/{ref}": {"title": "Case 1"},
        "POST /v1/tenants/{tenant_id}/contexts/{ref}/participants": {"display_name": "Pat"},
        "POST /v1/tenants/{tenant_id}/contexts/{ref}/messages": {"body": "hello"},
        "POST /v1/webhook-endpoints": {
            "url": "https://example.com/new",
            "event_types": ["tenant.active"],
        },
        "PATCH /v1/webhook-endpoints/{endpoint_id}": {"description": uuid.uuid4().hex[:8]},
    }
    if route == "GET /v1/exports/{export_id}/download":
        return method, path, {"params": world.exports[side][1]}
    return method, path, ({"json": bodies[route]} if route in bodies else {})


def database_state() -> dict[str, Any]:
    """What a denied call must not change (key bookkeeping like last_used_at excluded)."""
    with task_session() as session:
        return {
            "tenants": sorted(
                (str(t.id), t.display_name, t.status.value, str(t.plan_id))
                for t in session.scalars(select(Tenant))
            ),
            "plans": sorted(
                (p.code, p.name, p.base_fee_minor) for p in session.scalars(select(Plan))
            ),
            "accounts": sorted(str(a.id) for a in session.scalars(select(Account))),
            "keys": sorted(
                (k.key_id, k.revoked_at is None) for k in session.scalars(select(ApiKey))
            ),
            "operations": len(session.scalars(select(Operation.id)).all()),
            "invoices": len(session.scalars(select(Invoice.id)).all()),
            "audit": len(session.scalars(select(AuditEvent.id)).all()),
            "contexts": sorted(
                (str(c.id), c.status.value, c.title) for c in session.scalars(select(Context))
            ),
            "participants": sorted(
                (str(p.id), p.status.value) for p in session.scalars(select(ContextParticipant))
            ),
            "webhook_endpoints": sorted(
                (str(e.id), e.description, e.enabled, e.secret_encrypted)
                for e in session.scalars(select(WebhookEndpoint))
            ),
            "webhook_deliveries": sorted(
                (str(d.id), d.state.value) for d in session.scalars(select(WebhookDelivery))
            ),
        }


def matches(expected: str, status: int) -> bool:
    if expected == "ok":
        return 200 <= status < 300
    if expected == "ok*":
        return status not in (401, 403, 404) and status < 500
    return status == int(expected)


async def test_every_route_is_declared(platform_env: dict[str, str]) -> None:
    schema = create_app().openapi()
    routes = {f"{method.upper()} {path}" for path, ops in schema["paths"].items() for method in ops}
    assert routes == set(MATRIX) | PUBLIC


@pytest.mark.parametrize("caller", CALLERS)
async def test_the_permission_matrix(
    api: httpx.AsyncClient, caller: str, tuned_settings: Callable[..., None]
) -> None:
    # The expired and anonymous callers fail more credentials from one address than the
    # sign-in throttle's default budget allows once the matrix has this many routes.
    tuned_settings(C3_AUTH_ADDRESS_MAX_FAILURES="1000")
    world = await _world(api)
    failures = []
    deletes_last = sorted(MATRIX, key=lambda r: r.startswith("DELETE /v1/tenants"))
    for route in deletes_last:
        cell = MATRIX[route][caller]
        for side, expected in zip(
            ("a", "b"), cell if isinstance(cell, tuple) else (cell,), strict=False
        ):
            method, path, kwargs = request_for(route, world, side)
            denied = expected in ("401", "403", "404")
            before = database_state() if denied else None
            response = await api.request(method, path, headers=world.headers[caller], **kwargs)
            if not matches(expected, response.status_code):
                failures.append(
                    f"{route} [{side}] expected {expected}, got {response.status_code}: {response.text[:160]}"
                )
            elif denied and database_state() != before:
                failures.append(f"{route} [{side}] was refused but changed the database")
    assert not failures, "\n".join(failures)
