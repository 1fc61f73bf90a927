"""Examples for the main schemas of the OpenAPI document, kept together so they tell one story
(the tenant "acme", its provisioning operation, a key for it, its plan, a context). Each one
is checked against its schema by the tests (tests/tenant_api/test_openapi.py)."""

from __future__ import annotations

from typing import Any

TENANT_ID = "0b6f3a52-5bd4-4c3f-9a57-2f0d6c1e9a10"
OPERATION_ID = "5e0c2b7d-8f1a-4d6e-b3c9-7a4f2e1d0c98"
API = "https://api.c3.example.com"
CREATED = "2026-03-02T09:15:04.120000Z"

_SETTINGS = {
    "federation": {"mode": "off", "allowed_servers": []},
    "registration": "closed",
    "message_retention": None,
    "max_upload_size_bytes": None,
    "turn": None,
    "oidc": None,
}

_TENANT = {
    "id": TENANT_ID,
    "slug": "acme",
    "display_name": "Acme Corp",
    "server_name": "acme.c3.example.com",
    "status": "provisioning",
    "plan": "standard",
    "homeserver_url": "https://acme.c3.example.com",
    "homeserver_path_url": "https://matrix.c3.example.com/t/acme",
    "settings": _SETTINGS,
    "homeserver": {"state": "starting", "asleep_since": None},
    "created_at": CREATED,
    "updated_at": CREATED,
    "deleted_at": None,
}

_PLAN = {
    "code": "standard",
    "name": "Standard",
    "currency": "EUR",
    "base_fee": 4900,
    "prices": {
        "active_users": {"included": 100, "unit_price": 150},
        "messages": {"included": 100000, "unit_price": 1, "per": 1000},
    },
    "limits": {"max_mau": 500, "max_upload_size_bytes": 104857600},
    "allow_open_registration": False,
}

_KEY = {
    "id": "4kT9qZ2mWb7X",
    "name": "crm integration",
    "scopes": ["tenants:read", "users:write"],
    "tenant_id": TENANT_ID,
    "created_by": "operator:3f1d2c4b-6a5e-4d7c-8b9a-0e1f2a3b4c5d",
    "created_at": CREATED,
    "last_used_at": None,
    "revoked_at": None,
}

_CONTEXT = {
    "id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    "ref": "case-4711",
    "title": "Claim 4711",
    "metadata": {"crm_url": "https://crm.acme.com/cases/4711"},
    "room_id": "!QtykxKocfZaZOUrTwp:acme.c3.example.com",
    "status": "open",
    "message_count": 3,
    "last_activity_at": "2026-03-02T10:02:44Z",
    "created_at": "2026-03-02T09:58:10Z",
    "closed_at": None,
    "participants": [
        {
            "id": "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f",
            "kind": "tenant_user",
            "user_id": "@alice:acme.c3.example.com",
            "display_name": "Alice",
            "status": "active",
            "expires_at": None,
            "joined_at": "2026-03-02T09:58:11Z",
        }
    ],
}

EXAMPLES: dict[str, dict[str, Any]] = {
    "TenantCreate": {"slug": "acme", "display_name": "Acme Corp", "plan": "standard"},
    "TenantOut": {**_TENANT, "status": "active"},
    "TenantAccepted": {
        **_TENANT,
        "operation": {"id": OPERATION_ID, "url": f"{API}/v1/operations/{OPERATION_ID}"},
    },
    "OperationOut": {
        "id": OPERATION_ID,
        "tenant_id": TENANT_ID,
        "kind": "provision",
        "state": "running",
        "attempts": 1,
        "steps_done": ["render_config", "create_database"],
        "last_error": None,
        "history": [
            {
                "at": "2026-03-02T09:15:04.500000Z",
                "event": "attempt",
                "attempt": 1,
                "step": None,
                "detail": None,
                "delay_s": None,
            },
            {
                "at": "2026-03-02T09:15:05.210000Z",
                "event": "step",
                "attempt": 1,
                "step": "render_config",
                "detail": None,
                "delay_s": None,
            },
        ],
        "created_at": CREATED,
        "updated_at": "2026-03-02T09:15:05.210000Z",
        "started_at": "2026-03-02T09:15:04.500000Z",
        "finished_at": None,
    },
    "ApiKeyCreate": {
        "name": "crm integration",
        "scopes": ["tenants:read", "users:write"],
        "tenant_id": TENANT_ID,
    },
    "ApiKeyOut": _KEY,
    "ApiKeyCreated": {**_KEY, "key": "c3k_4kT9qZ2mWb7X_Vx8L2pQ9sT4wZ7yB1cF5hJ8kM3nR6tU0vAa9dE2"},
    "PlanCreate": _PLAN,
    "PlanOut": {
        "id": "7d6c5b4a-3e2f-4a1b-9c8d-7e6f5a4b3c2d",
        **_PLAN,
        "is_default": True,
        "created_at": "2026-01-05T08:00:00Z",
        "updated_at": "2026-01-05T08:00:00Z",
    },
    "ContextPut": {
        "title": "Claim 4711",
        "participants": [{"user": "alice"}],
        "metadata": {"crm_url": "https://crm.acme.com/cases/4711"},
    },
    "ContextOut": _CONTEXT,
}
