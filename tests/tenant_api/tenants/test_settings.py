"""PATCH /v1/tenants/{id} homeserver settings and /registration-tokens over REST (no worker
here): what is stored, what is shown, what starts a reconfigure, what is refused and why."""

from __future__ import annotations

import ipaddress
import logging
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from platform_core.crypto import SecretBox
from platform_core.db import task_session
from platform_core.models import Operation, OperationKind, OperationState, Tenant
from platform_core.settings import get_settings
from tenant_api.access_log import RedactCredentials
from tenant_api.kit import tasks as kit_tasks
from tests.helpers.api import (
    active_tenant,
    assert_problem,
    plan_with_upload_limit,
    slug,
    tenant_admin_headers,
)

TURN_SECRET = "coturn-static-auth-secret-1"
OIDC_SECRET = "oidc-client-secret-1"
SETTINGS: dict[str, Any] = {
    "federation": {"mode": "allowlist", "allowed_servers": ["Partner.Example", "a.example"]},
    "registration": "token",
    "message_retention": {"max_lifetime_days": 30},
    "max_upload_size_bytes": 5 * 1024 * 1024,
    "turn": {"uris": ["turns:turn.acme.example:443?transport=tcp"], "shared_secret": TURN_SECRET},
    "oidc": {
        "issuer": "https://login.acme.example/realms/staff",
        "client_id": "c3-acme",
        "client_secret": OIDC_SECRET,
        "display_name": "Acme SSO",
        "scopes": ["email", "openid"],
    },
}


def stored(tenant_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tenant's stored settings and its decrypted setting secrets."""
    with task_session() as session:
        row = session.get(Tenant, uuid.UUID(tenant_id))
        assert row is not None
        box = SecretBox(get_settings().require_secret_key())
        secrets = (
            box.decrypt_json(row.settings_secrets_encrypted)
            if row.settings_secrets_encrypted
            else {}
        )
        return dict(row.homeserver_settings), secrets


async def test_settings_are_stored_shown_without_secrets_and_reconfigure(
    api: httpx.AsyncClient,
) -> None:
    tenant = await active_tenant(api)
    assert tenant["settings"] == {
        "federation": {"mode": "off", "allowed_servers": []},
        "registration": "closed",
        "message_retention": None,
        "max_upload_size_bytes": None,
        "turn": None,
        "oidc": None,
    }
    patched = await api.patch(f"/v1/tenants/{tenant['id']}", json=SETTINGS)
    assert patched.status_code == 200, patched.text
    assert TURN_SECRET not in patched.text and OIDC_SECRET not in patched.text
    shown = patched.json()["settings"]
    assert shown["federation"] == {"mode": "allowlist", "allowed_servers": ["a.example", "partner.example"]}  # fmt: skip
    assert shown["registration"] == "token"
    assert shown["message_retention"] == {"max_lifetime_days": 30}
    assert shown["turn"] == {
        "uris": ["turns:turn.acme.example:443?transport=tcp"],
        "user_lifetime_s": 3600,
        "shared_secret_set": True,
    }
    assert shown["oidc"]["scopes"] == ["openid", "email"]  # openid always, first
    assert shown["oidc"]["client_secret_set"] is True
    operation = (await api.get(patched.headers["location"])).json()
    assert (operation["kind"], operation["state"]) == ("reconfigure", "pending")

    settings, secrets = stored(tenant["id"])
    assert TURN_SECRET not in str(settings) and OIDC_SECRET not in str(settings)
    assert secrets == {"turn_shared_secret": TURN_SECRET, "oidc_client_secret": OIDC_SECRET}
    assert (await api.get(f"/v1/tenants/{tenant['id']}")).json()["settings"] == shown

    events = (await api.get("/v1/audit-events", params={"tenant_id": tenant["id"]})).json()
    [update] = [e for e in events["items"] if e["action"] == "tenant.update"]
    assert TURN_SECRET not in str(update) and OIDC_SECRET not in str(update)
    assert update["details"]["turn"]["shared_secret_changed"] is True


async def test_omitted_fields_stay_and_repeating_a_setting_restarts_nothing(
    api: httpx.AsyncClient,
) -> None:
    tenant = await active_tenant(api)
    await api.patch(f"/v1/tenants/{tenant['id']}", json=SETTINGS)
    again = await api.patch(
        f"/v1/tenants/{tenant['id']}", json={"registration": "token", "display_name": "Acme"}
    )
    assert again.status_code == 200 and "location" not in again.headers
    assert again.json()["settings"]["turn"]["uris"] == SETTINGS["turn"]["uris"]
    # Default values in effect already are no change either.
    fresh = await active_tenant(api)
    same = await api.patch(
        f"/v1/tenants/{fresh['id']}", json={"federation": {"mode": "off"}, "registration": "closed"}
    )
    assert same.status_code == 200 and "location" not in same.headers


def reconfigures(tenant_id: str) -> list[tuple[str, str]]:
    """The tenant's reconfigure operations (id, state), oldest first."""
    with task_session() as session:
        rows = session.execute(
            select(Operation.id, Operation.state)
            .where(
                Operation.tenant_id == uuid.UUID(tenant_id),
                Operation.kind == OperationKind.RECONFIGURE,
            )
            .order_by(Operation.created_at)
        )
        return [(str(op_id), state.value) for op_id, state in rows]


async def test_a_burst_of_changes_queues_one_reconfigure_while_it_waits(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six toggles in a row are one homeserver restart, not six: later changes join the
    reconfigure that has not started; once a worker runs it, one more (and only one) follows."""
    tenant = await active_tenant(api)
    enqueued: list[str] = []
    real_send_task = kit_tasks.send_task
    monkeypatch.setattr(
        kit_tasks,
        "send_task",
        lambda name, op_id: (enqueued.append(op_id), real_send_task(name, op_id)),
    )
    url = f"/v1/tenants/{tenant['id']}"
    locations = set()
    for days in range(1, 7):
        answer = await api.patch(url, json={"message_retention": {"max_lifetime_days": days}})
        assert answer.status_code == 200, answer.text
        locations.add(answer.headers["location"])
    [(first, state)] = reconfigures(tenant["id"])
    assert state == "pending" and {loc.rsplit("/", 1)[1] for loc in locations} == {first}
    assert enqueued == [first]
    assert stored(tenant["id"])[0] == {"message_retention": {"max_lifetime_days": 6}}

    # A worker starts it (it renders what is stored now): the next change needs one more...
    with task_session() as session:
        row = session.get(Operation, uuid.UUID(first))
        assert row is not None
        row.state = OperationState.RUNNING
    for policy in ("token", "closed", "token"):
        answer = await api.patch(url, json={"registration": policy})
        assert answer.status_code == 200, answer.text
        locations.add(answer.headers["location"])
    # ... and only one: the others join it.
    [_, (second, state)] = reconfigures(tenant["id"])
    assert state == "pending" and len(locations) == 2 and enqueued == [first, second]
    assert (await api.get(f"/v1/operations/{second}")).json()["state"] == "pending"


async def test_secrets_are_kept_when_omitted_and_null_resets_to_defaults(
    api: httpx.AsyncClient,
) -> None:
    tenant = await active_tenant(api)
    await api.patch(f"/v1/tenants/{tenant['id']}", json=SETTINGS)
    moved = await api.patch(
        f"/v1/tenants/{tenant['id']}",
        json={"turn": {"uris": ["turn:198.51.100.7:3478"], "user_lifetime_s": 600}},
    )
    assert moved.status_code == 200, moved.text
    assert "location" in moved.headers
    assert stored(tenant["id"])[1]["turn_shared_secret"] == TURN_SECRET

    reset = await api.patch(
        f"/v1/tenants/{tenant['id']}",
        json={
            "federation": None,
            "registration": None,
            "message_retention": None,
            "max_upload_size_bytes": None,
            "turn": None,
            "oidc": None,
        },
    )
    assert reset.status_code == 200, reset.text
    assert reset.json()["settings"] == tenant["settings"]
    assert stored(tenant["id"]) == ({}, {})


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"federation": {"mode": "allowlist"}}, "at least one server"),
        ({"federation": {"mode": "open", "allowed_servers": ["a.example"]}}, "allowlist"),
        ({"federation": {"mode": "allowlist", "allowed_servers": ["not a name"]}}, "DNS name"),
        ({"federation": {"mode": "sometimes"}}, "federation.mode"),
        ({"registration": "invite-only"}, "registration"),
        ({"message_retention": {"max_lifetime_days": 0}}, "max_lifetime_days"),
        ({"max_upload_size_bytes": 100}, "max_upload_size_bytes"),
        ({"turn": {"uris": ["http://turn.example"], "shared_secret": TURN_SECRET}}, "TURN URI"),
        ({"turn": {"uris": [], "shared_secret": TURN_SECRET}}, "turn.uris"),
        ({"turn": {"uris": ["turn:turn.example"]}}, "turn.shared_secret"),
        ({"oidc": {"issuer": "http://id.example", "client_id": "c", "client_secret": "s"}}, "https"),
        ({"oidc": {"issuer": "https://id.example", "client_id": "c"}}, "oidc.client_secret"),
        (
            {"oidc": {"issuer": "https://id.example", "client_id": "c", "client_secret": "s", "scopes": ["a b"]}},
            "scope",
        ),
        ({"oidc": {**SETTINGS["oidc"], "extra": 1}}, "extra"),
    ],
)  # fmt: skip
async def test_invalid_settings_are_422_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], needle: str
) -> None:
    tenant = await active_tenant(api)
    response = await api.patch(f"/v1/tenants/{tenant['id']}", json=body)
    assert_problem(response, 422, needle)
    assert TURN_SECRET not in response.text and OIDC_SECRET not in response.text
    assert stored(tenant["id"]) == ({}, {})


async def test_the_upload_cap_must_stay_within_the_plan(api: httpx.AsyncClient) -> None:
    tenant = await active_tenant(api)
    code = await plan_with_upload_limit(api, 8 * 1024 * 1024)
    over_default = await api.patch(
        f"/v1/tenants/{tenant['id']}", json={"max_upload_size_bytes": 60 * 1024 * 1024}
    )
    assert_problem(over_default, 422, "max_upload_size_bytes", str(50 * 1024 * 1024))
    # Checked against the plan the same PATCH moves to.
    over_new_plan = await api.patch(
        f"/v1/tenants/{tenant['id']}",
        json={"plan": code, "max_upload_size_bytes": 9 * 1024 * 1024},
    )
    assert_problem(over_new_plan, 422, str(8 * 1024 * 1024))
    within = await api.patch(
        f"/v1/tenants/{tenant['id']}", json={"plan": code, "max_upload_size_bytes": 1024 * 1024}
    )
    assert within.status_code == 200, within.text
    assert within.json()["plan"] == code
    assert within.json()["settings"]["max_upload_size_bytes"] == 1024 * 1024


async def test_a_deleting_tenant_keeps_its_settings(api: httpx.AsyncClient) -> None:
    tenant = await active_tenant(api)
    await api.delete(f"/v1/tenants/{tenant['id']}")
    response = await api.patch(f"/v1/tenants/{tenant['id']}", json={"registration": "open"})
    assert_problem(response, 409, "deleting")


async def test_settings_of_a_provisioning_tenant_wait_for_its_homeserver(
    api: httpx.AsyncClient,
) -> None:
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "P"})).json()
    response = await api.patch(f"/v1/tenants/{tenant['id']}", json={"registration": "open"})
    assert response.status_code == 200, response.text
    assert "location" not in response.headers  # the provisioning renders them
    assert stored(tenant["id"])[0] == {"registration": "open"}


async def test_tenant_admins_change_settings_but_not_the_plan(api: httpx.AsyncClient) -> None:
    tenant = await active_tenant(api)
    admin = await tenant_admin_headers(api, tenant["id"])
    url = f"/v1/tenants/{tenant['id']}"
    changed = await api.patch(url, json={"registration": "token"}, headers=admin)
    assert changed.status_code == 200, changed.text
    assert changed.json()["settings"]["registration"] == "token"
    plan = await api.patch(url, json={"plan": "standard", "registration": "open"}, headers=admin)
    assert_problem(plan, 422, "only operators")
    assert stored(tenant["id"])[0] == {"registration": "token"}


async def test_tenant_admins_open_registration_only_on_a_plan_that_allows_it(
    api: httpx.AsyncClient,
) -> None:
    tenant = await active_tenant(api)
    admin = await tenant_admin_headers(api, tenant["id"])
    url = f"/v1/tenants/{tenant['id']}"
    refused = await api.patch(url, json={"registration": "open"}, headers=admin)
    assert_problem(refused, 403, "does not allow tenant admins")
    assert "'standard'" in refused.json()["detail"] and "token" in refused.json()["detail"]
    assert "location" not in refused.headers
    assert stored(tenant["id"])[0] == {}  # still closed; nothing queued
    # closed and token stay the tenant admin's choice
    token = await api.patch(url, json={"registration": "token"}, headers=admin)
    assert token.status_code == 200, token.text
    assert token.json()["settings"]["registration"] == "token"

    # The operator moves the tenant to a plan that allows it: now the admin may open it.
    code = f"open{uuid.uuid4().hex[:8]}"
    created = await api.post(
        "/v1/plans",
        json={"code": code, "name": "Open", "currency": "EUR", "allow_open_registration": True},
    )
    assert created.status_code == 201, created.text
    assert created.json()["allow_open_registration"] is True
    assert (await api.patch(url, json={"plan": code})).status_code == 200
    opened = await api.patch(url, json={"registration": "open"}, headers=admin)
    assert opened.status_code == 200, opened.text
    assert opened.json()["settings"]["registration"] == "open"

    # The operator turns the flag off: admins can no longer reopen once closed.
    off = await api.patch(f"/v1/plans/{code}", json={"allow_open_registration": False})
    assert off.json()["allow_open_registration"] is False
    await api.patch(url, json={"registration": "closed"}, headers=admin)
    again = await api.patch(url, json={"registration": "open"}, headers=admin)
    assert_problem(again, 403, f"plan '{code}' does not allow")


async def test_operators_open_registration_on_any_plan(api: httpx.AsyncClient) -> None:
    tenant = await active_tenant(api)
    assert (await api.get("/v1/plans/standard")).json()["allow_open_registration"] is False
    opened = await api.patch(f"/v1/tenants/{tenant['id']}", json={"registration": "open"})
    assert opened.status_code == 200, opened.text
    assert stored(tenant["id"])[0] == {"registration": "open"}
    # Once the operator opened it, the tenant admin may repeat it (no change) or close it.
    admin = await tenant_admin_headers(api, tenant["id"])
    url = f"/v1/tenants/{tenant['id']}"
    same = await api.patch(url, json={"registration": "open"}, headers=admin)
    assert same.status_code == 200, same.text
    closed = await api.patch(url, json={"registration": "closed"}, headers=admin)
    assert closed.json()["settings"]["registration"] == "closed"


# Registration tokens (no homeserver runs here: the end-to-end test drives a real one) -----


async def test_registration_tokens_need_a_running_homeserver(api: httpx.AsyncClient) -> None:
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "T"})).json()
    url = f"/v1/tenants/{tenant['id']}/registration-tokens"
    assert_problem(await api.post(url, json={"uses_allowed": 1}), 409, "provisioning")
    assert_problem(await api.get(url), 409, "provisioning")
    assert_problem(await api.delete(f"{url}/some-token-1"), 409, "provisioning")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"token": "short"}, "token"),
        ({"token": "has spaces in it"}, "token"),
        ({"token": "abcdefgh1234", "length": 20}, "either a token"),
        ({"length": 65}, "length"),
        ({"uses_allowed": 0}, "uses_allowed"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "future"),
        ({"expires_at": "2999-01-01T00:00:00"}, "timezone"),
    ],
)
async def test_registration_token_requests_are_validated(
    api: httpx.AsyncClient, body: dict[str, Any], needle: str
) -> None:
    tenant = await active_tenant(api)
    response = await api.post(f"/v1/tenants/{tenant['id']}/registration-tokens", json=body)
    problem = assert_problem(response, 422, needle)
    assert "abcdefgh1234" not in str(problem)


def test_registration_tokens_in_paths_never_reach_the_access_log() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "DELETE", "/v1/tenants/x/registration-tokens/Secret-Tok3n", "1.1", 204),
        None,
    )
    assert RedactCredentials().filter(record) is True
    assert "Secret-Tok3n" not in record.getMessage()
    assert "/registration-tokens/<redacted>" in record.getMessage()


# An issuer on the platform's own networks: the homeserver would fetch it at once (SSRF).
INTERNAL_ISSUERS = [
    ("https://127.0.0.1:8448/", "loopback"),
    ("https://2130706433/", "127.0.0.1, a loopback"),  # decimal spelling of 127.0.0.1
    ("https://0177.0.0.1/", "127.0.0.1, a loopback"),  # octal
    ("https://localhost/realms/staff", "a loopback"),  # a name resolving to loopback
    ("https://[::1]/", "loopback"),
    ("https://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped IPv6
    ("https://169.254.169.254/latest/meta-data", "link-local"),  # cloud metadata
    ("https://10.0.0.5/", "private"),
    ("https://192.168.1.1/", "private"),
    ("https://[fd12:3456::1]/", "private"),  # unique-local
    ("https://0.0.0.0/", "unspecified"),
    ("https://224.0.0.1/", "multicast"),
    ("https://240.0.0.1/", "reserved"),
    ("https://100.64.0.1/", "non-public"),  # carrier-grade NAT
]


@pytest.mark.parametrize(("issuer", "needle"), INTERNAL_ISSUERS)
async def test_an_issuer_on_an_internal_network_is_refused(
    api: httpx.AsyncClient, issuer: str, needle: str
) -> None:
    tenant = await active_tenant(api)
    body = {"oidc": {"issuer": issuer, "client_id": "c3", "client_secret": OIDC_SECRET}}
    response = await api.patch(f"/v1/tenants/{tenant['id']}", json=body)
    assert_problem(response, 422, "oidc.issuer", needle, "internal networks")
    assert OIDC_SECRET not in response.text
    assert stored(tenant["id"]) == ({}, {})
    assert (await api.get(f"/v1/tenants/{tenant['id']}")).json()["settings"]["oidc"] is None


async def test_an_operator_allowed_network_may_hold_the_issuer(
    platform_env: dict[str, str],
) -> None:
    """C3_OUTBOUND_ALLOWED_NETWORKS (a test IdP on loopback, an on-premises IdP) lets exactly
    those networks through; everything else stays refused."""
    from tenant_api.deps import settings_dep
    from tenant_api.main import create_app
    from tests.helpers.environment import auth

    allowed = get_settings().model_copy(
        update={"outbound_allowed_networks": [ipaddress.ip_network("127.0.0.1/32")]}
    )
    app = create_app()
    app.dependency_overrides[settings_dep] = lambda: allowed
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=auth()) as c:
        tenant = await active_tenant(c)
        url = f"/v1/tenants/{tenant['id']}"
        oidc = {"client_id": "c3", "client_secret": OIDC_SECRET}
        ok = await c.patch(url, json={"oidc": {"issuer": "https://127.0.0.1:9443/", **oidc}})
        assert ok.status_code == 200, ok.text
        assert ok.json()["settings"]["oidc"]["issuer"] == "https://127.0.0.1:9443/"
        other = await c.patch(url, json={"oidc": {"issuer": "https://127.0.0.2/", **oidc}})
        assert_problem(other, 422, "oidc.issuer", "loopback")
