"""The tenant API as tests use it: unique slugs and emails, problem+json assertions, tenants,
plans and signed-in principals."""

from __future__ import annotations

import random
import uuid

import httpx

from platform_core.db import task_session
from platform_core.models import Tenant, TenantStatus

PROBLEM = "application/problem+json"


def slug() -> str:
    return f"co{uuid.uuid4().hex[:10]}"


def assert_problem(response: httpx.Response, status: int, *needles: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    for needle in needles:
        assert needle in body["detail"], body
    return body


async def active_tenant(api: httpx.AsyncClient) -> dict:
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "L"})).json()
    with task_session() as session:
        row = session.get(Tenant, uuid.UUID(tenant["id"]))
        assert row is not None
        row.status = TenantStatus.ACTIVE
    return tenant


async def plan_with_upload_limit(api: httpx.AsyncClient, limit_bytes: int) -> str:
    """A new EUR plan whose only limit is ``limit_bytes`` per upload; its code."""
    code = f"up{uuid.uuid4().hex[:8]}"
    created = await api.post(
        "/v1/plans",
        json={
            "code": code,
            "name": f"Uploads up to {limit_bytes} bytes",
            "currency": "EUR",
            "limits": {"max_upload_size_bytes": limit_bytes},
        },
    )
    assert created.status_code == 201, created.text
    return code


PASSWORD = "correct horse battery"


def email() -> str:
    return f"u{uuid.uuid4().hex[:10]}@example.com"


async def new_tenant(api: httpx.AsyncClient) -> dict:
    response = await api.post("/v1/tenants", json={"slug": slug(), "display_name": "X"})
    assert response.status_code == 202, response.text
    return response.json()


async def sign_in(api: httpx.AsyncClient, user: str, password: str = PASSWORD) -> httpx.Response:
    return await api.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": user, "password": password},
        headers={"Authorization": ""},
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_tenant_admin(api: httpx.AsyncClient, tenant_id: str) -> dict:
    """A new tenant admin account of ``tenant_id`` (password ``PASSWORD``), as the API shows it."""
    created = await api.post(
        "/v1/accounts",
        json={
            "email": email(),
            "password": PASSWORD,
            "role": "tenant_admin",
            "tenant_id": tenant_id,
        },
    )
    assert created.status_code == 201, created.text
    return created.json()


async def tenant_admin_headers(api: httpx.AsyncClient, tenant_id: str) -> dict[str, str]:
    """Authorization headers of a new, signed-in tenant admin of ``tenant_id``."""
    admin = await new_tenant_admin(api, tenant_id)
    tokens = await sign_in(api, admin["email"])
    assert tokens.status_code == 200, tokens.text
    return bearer(tokens.json()["access_token"])


def client_address() -> str:
    """A fresh client address (TEST-NET-2/benchmarking range): the API keeps failure budgets
    per address, so each test gets its own budget."""
    return f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"


def api_client(app: object, address: str | None = None, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address or client_address(), 40000))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers)
