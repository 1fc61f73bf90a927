"""Signing in: accounts, the OAuth2 password flow, rotating and revocable refresh tokens,
API keys shown once and revoked at once, and the audit trail of every write."""

from __future__ import annotations

import uuid

import httpx
from typer.testing import CliRunner

from c3.cli import app as cli
from tests.helpers.api import PASSWORD, assert_problem, bearer, email, new_tenant, sign_in, slug


async def test_a_tenant_admin_signs_in_and_sees_only_its_tenant(api: httpx.AsyncClient) -> None:
    mine, other = await new_tenant(api), await new_tenant(api)
    admin = email()
    created = await api.post(
        "/v1/accounts",
        json={
            "email": admin,
            "password": PASSWORD,
            "role": "tenant_admin",
            "tenant_id": mine["id"],
        },
    )
    assert created.status_code == 201, created.text
    assert "password" not in created.text

    tokens = (await sign_in(api, admin.upper())).json()  # emails are case-insensitive
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900
    as_admin = bearer(tokens["access_token"])
    listed = (await api.get("/v1/tenants", headers=as_admin)).json()["items"]
    assert [t["id"] for t in listed] == [mine["id"]]
    assert (await api.get(f"/v1/tenants/{mine['id']}", headers=as_admin)).status_code == 200
    hidden = await api.get(f"/v1/tenants/{other['id']}", headers=as_admin)
    assert_problem(hidden, 404, "not found")  # never 403: no existence leak
    refused = await api.patch(
        f"/v1/tenants/{mine['id']}", json={"plan": "standard"}, headers=as_admin
    )
    assert_problem(refused, 422, "only operators")


async def test_wrong_passwords_and_unknown_accounts_look_the_same(api: httpx.AsyncClient) -> None:
    user = email()
    await api.post("/v1/accounts", json={"email": user, "password": PASSWORD, "role": "operator"})
    wrong = await sign_in(api, user, "not the password")
    unknown = await sign_in(api, email())
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]


async def test_refresh_tokens_rotate_and_a_reused_one_revokes_the_sign_in(
    api: httpx.AsyncClient,
) -> None:
    user = email()
    await api.post("/v1/accounts", json={"email": user, "password": PASSWORD, "role": "operator"})
    first = (await sign_in(api, user)).json()

    async def refresh(token: str) -> httpx.Response:
        return await api.post(
            "/v1/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": token},
            headers={"Authorization": ""},
        )

    second = await refresh(first["refresh_token"])
    assert second.status_code == 200, second.text
    assert second.json()["refresh_token"] != first["refresh_token"]
    # The first token comes back (stolen): refused, and the whole sign-in is revoked.
    assert (await refresh(first["refresh_token"])).status_code == 401
    assert (await refresh(second.json()["refresh_token"])).status_code == 401

    third = (await sign_in(api, user)).json()
    revoked = await api.post(
        "/v1/auth/revoke", data={"token": third["refresh_token"]}, headers={"Authorization": ""}
    )
    assert revoked.status_code == 200
    assert (await refresh(third["refresh_token"])).status_code == 401


async def test_api_keys_are_shown_once_scoped_and_revoked_immediately(
    api: httpx.AsyncClient,
) -> None:
    tenant = await new_tenant(api)
    created = await api.post(
        "/v1/api-keys",
        json={"name": "crm", "scopes": ["tenants:read", "usage:read"], "tenant_id": tenant["id"]},
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert key.startswith("c3k_")
    listed = (await api.get("/v1/api-keys")).json()["items"]
    mine = next(k for k in listed if k["id"] == created.json()["id"])
    assert "key" not in mine and key not in (await api.get("/v1/api-keys")).text

    as_key = bearer(key)
    assert (await api.get(f"/v1/tenants/{tenant['id']}", headers=as_key)).status_code == 200
    denied = await api.post(f"/v1/tenants/{tenant['id']}/users", json={}, headers=as_key)
    assert_problem(denied, 403, "users:write")
    used = next(k for k in (await api.get("/v1/api-keys")).json()["items"] if k["id"] == mine["id"])
    assert used["last_used_at"] is not None

    assert (await api.delete(f"/v1/api-keys/{mine['id']}")).status_code == 200
    assert (await api.get(f"/v1/tenants/{tenant['id']}", headers=as_key)).status_code == 401
    typo = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert (await api.get("/v1/tenants", headers=bearer(typo))).status_code == 401


async def test_keys_cannot_outgrow_their_creator(api: httpx.AsyncClient) -> None:
    tenant = await new_tenant(api)
    refused = await api.post(
        "/v1/api-keys",
        json={"name": "x", "scopes": ["plans:write"], "tenant_id": tenant["id"]},
    )
    assert_problem(refused, 422, "tenant-bound key cannot hold plans:write")
    limited = (
        await api.post(
            "/v1/api-keys",
            json={"name": "k", "scopes": ["keys:write", "tenants:read"], "tenant_id": tenant["id"]},
        )
    ).json()["key"]
    escalate = await api.post(
        "/v1/api-keys",
        json={"name": "y", "scopes": ["usage:read"]},
        headers=bearer(limited),
    )
    assert_problem(escalate, 422, "usage:read")


async def test_every_write_is_in_the_audit_log(api: httpx.AsyncClient) -> None:
    tenant = await api.post(
        "/v1/tenants",
        json={"slug": slug(), "display_name": "Audited"},
        headers={"X-Request-ID": "req-audit-123456"},
    )
    assert tenant.headers["x-request-id"] == "req-audit-123456"
    tenant_id = tenant.json()["id"]
    await api.patch(f"/v1/tenants/{tenant_id}", json={"display_name": "Renamed"})
    events = (await api.get("/v1/audit-events", params={"tenant_id": tenant_id})).json()["items"]
    assert [e["action"] for e in events] == ["tenant.update", "tenant.create"]
    created = events[-1]
    assert created["actor"] == "operator:bootstrap"
    assert created["request_id"] == "req-audit-123456"
    assert created["target_id"] == tenant_id


def test_the_first_operator_is_made_on_the_command_line(platform_env: dict[str, str]) -> None:
    runner = CliRunner()
    user = email()
    result = runner.invoke(
        cli, ["operator", "create", "--email", user, "--password-stdin"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    assert user in result.output and PASSWORD not in result.output
    again = runner.invoke(
        cli, ["operator", "create", "--email", user, "--password-stdin"], input=PASSWORD + "\n"
    )
    assert again.exit_code == 1
    short = runner.invoke(
        cli, ["operator", "create", "--email", email(), "--password-stdin"], input="short\n"
    )
    assert short.exit_code == 2 and "password" in short.output


async def test_write_schemas_refuse_privileged_and_unknown_fields(api: httpx.AsyncClient) -> None:
    tenant = await new_tenant(api)
    cases = [
        ("POST", "/v1/tenants", {"slug": slug(), "display_name": "X", "status": "active"}),
        ("POST", "/v1/tenants", {"slug": slug(), "display_name": "X", "id": str(uuid.uuid4())}),
        ("PATCH", f"/v1/tenants/{tenant['id']}", {"status": "active"}),
        ("PATCH", f"/v1/tenants/{tenant['id']}", {"server_name": "evil.example"}),
        ("PATCH", f"/v1/tenants/{tenant['id']}", {"limits": {"max_mau": 10**9}}),
        ("POST", "/v1/api-keys", {"name": "k", "scopes": ["tenants:read"], "key_id": "mine"}),
        ("POST", "/v1/api-keys", {"name": "k", "scopes": ["root"]}),
        ("POST", "/v1/accounts", {"email": email(), "password": PASSWORD, "role": "root"}),
        (
            "POST",
            "/v1/accounts",
            {"email": email(), "password": PASSWORD, "role": "operator", "disabled_at": None},
        ),
        (
            "POST",
            f"/v1/tenants/{tenant['id']}/users",
            {"username": "u", "password": "x" * 12, "id": 1},
        ),
    ]
    for method, path, body in cases:
        response = await api.request(method, path, json=body)
        assert response.status_code == 422, (method, path, body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
