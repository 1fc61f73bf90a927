"""Disabling, re-enabling and resetting accounts: a disabled account cannot sign in, its
refresh tokens are dead and its access tokens stop working within seconds; tenant admins
manage only their own tenant's admins (others are 404, never 403); every change is audited."""

from __future__ import annotations

import httpx

from tests.helpers.api import (
    PASSWORD,
    assert_problem,
    bearer,
    email,
    new_tenant,
    new_tenant_admin,
    sign_in,
)
from tests.helpers.platform import poll_async

NEW_PASSWORD = "a brand new passphrase"


async def refresh(api: httpx.AsyncClient, token: str) -> httpx.Response:
    return await api.post(
        "/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        headers={"Authorization": ""},
    )


async def signed_in(api: httpx.AsyncClient, user: str, password: str = PASSWORD) -> dict:
    response = await sign_in(api, user, password)
    assert response.status_code == 200, response.text
    return response.json()


async def until_refused(api: httpx.AsyncClient, access_token: str) -> None:
    """Poll until the access token gets 401: within seconds, far below its 15 min lifetime."""

    async def refused() -> httpx.Response | None:
        response = await api.get("/v1/tenants", headers=bearer(access_token))
        return response if response.status_code == 401 else None

    response = await poll_async(refused, timeout=5, what="the access token to be refused")
    assert_problem(response, 401, "session was ended")


async def actions(api: httpx.AsyncClient, tenant_id: str, account_id: str) -> list[str]:
    events = (await api.get("/v1/audit-events", params={"tenant_id": tenant_id})).json()["items"]
    return [e["action"] for e in events if e["target_id"] == account_id]


async def test_a_disabled_account_loses_every_session_and_can_be_enabled_again(
    api: httpx.AsyncClient,
) -> None:
    tenant = await new_tenant(api)
    admin = await new_tenant_admin(api, tenant["id"])
    tokens = await signed_in(api, admin["email"])
    assert (await api.get("/v1/tenants", headers=bearer(tokens["access_token"]))).status_code == 200

    disabled = await api.post(f"/v1/accounts/{admin['id']}/disable")
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["disabled_at"] is not None

    assert_problem(await sign_in(api, admin["email"]), 401, "invalid credentials")
    assert_problem(await refresh(api, tokens["refresh_token"]), 401, "invalid refresh token")
    await until_refused(api, tokens["access_token"])

    enabled = await api.post(f"/v1/accounts/{admin['id']}/enable")
    assert enabled.status_code == 200 and enabled.json()["disabled_at"] is None
    again = await signed_in(api, admin["email"])
    assert (await api.get("/v1/tenants", headers=bearer(again["access_token"]))).status_code == 200
    # Sessions ended by the disable stay ended.
    assert (await api.get("/v1/tenants", headers=bearer(tokens["access_token"]))).status_code == 401
    assert (await refresh(api, tokens["refresh_token"])).status_code == 401
    assert (await actions(api, tenant["id"], admin["id"]))[:2] == [
        "account.enable",
        "account.disable",
    ]


async def test_a_password_reset_ends_every_session(api: httpx.AsyncClient) -> None:
    tenant = await new_tenant(api)
    admin = await new_tenant_admin(api, tenant["id"])
    old = await signed_in(api, admin["email"])

    too_short = await api.post(f"/v1/accounts/{admin['id']}/reset-password", json={"password": "x"})
    assert_problem(too_short, 422, "password")
    reset = await api.post(
        f"/v1/accounts/{admin['id']}/reset-password", json={"password": NEW_PASSWORD}
    )
    assert reset.status_code == 200, reset.text
    assert NEW_PASSWORD not in reset.text

    assert (await sign_in(api, admin["email"], PASSWORD)).status_code == 401
    assert (await refresh(api, old["refresh_token"])).status_code == 401
    await until_refused(api, old["access_token"])
    new = await signed_in(api, admin["email"], NEW_PASSWORD)
    assert (await api.get("/v1/tenants", headers=bearer(new["access_token"]))).status_code == 200
    assert "account.reset_password" in await actions(api, tenant["id"], admin["id"])


async def test_tenant_admins_manage_only_their_own_tenants_admins(api: httpx.AsyncClient) -> None:
    mine, theirs = await new_tenant(api), await new_tenant(api)
    me, colleague = await new_tenant_admin(api, mine["id"]), await new_tenant_admin(api, mine["id"])
    stranger = await new_tenant_admin(api, theirs["id"])
    operator = await api.post(
        "/v1/accounts", json={"email": email(), "password": PASSWORD, "role": "operator"}
    )
    as_me = bearer((await signed_in(api, me["email"]))["access_token"])

    done = await api.post(f"/v1/accounts/{colleague['id']}/disable", headers=as_me)
    assert done.status_code == 200, done.text
    assert (
        await api.post(f"/v1/accounts/{colleague['id']}/enable", headers=as_me)
    ).status_code == 200
    assert (await api.get(f"/v1/accounts/{colleague['id']}", headers=as_me)).status_code == 200

    for hidden in (stranger["id"], operator.json()["id"]):
        for path in ("disable", "enable", "reset-password"):
            refused = await api.post(
                f"/v1/accounts/{hidden}/{path}", json={"password": NEW_PASSWORD}, headers=as_me
            )
            assert_problem(refused, 404, "no account")  # never 403: no existence leak
    assert (await signed_in(api, stranger["email"]))["access_token"]  # untouched

    myself = await api.post(f"/v1/accounts/{me['id']}/disable", headers=as_me)
    assert_problem(myself, 409, "your own account")
    creating = await api.post(
        "/v1/accounts",
        json={"email": email(), "password": PASSWORD, "role": "operator"},
        headers=as_me,
    )
    assert_problem(creating, 403, "only operators")
    events = (await api.get("/v1/audit-events", params={"tenant_id": mine["id"]})).json()["items"]
    disable = next(e for e in events if e["action"] == "account.disable")
    assert disable["actor"] == f"tenant_admin:{me['id']}"
