"""The platform's admin account on a real Synapse: it heals when someone logs its token out,
and usernames cannot steer the platform's admin API calls to other endpoints."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.helpers.platform import RunningPlatform

pytestmark = pytest.mark.e2e

RENEWED = "homeserver.admin_token_renewed"


def admin_tokens(platform: RunningPlatform, tenant: dict[str, Any]) -> list[str]:
    """The platform admin's live access tokens, read from the homeserver's own database (as
    whoever got hold of a copy of it could)."""
    database = platform.homeserver_dir(tenant["id"]) / "homeserver.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT token FROM access_tokens WHERE user_id = ?",
            (f"@c3-admin:{tenant['server_name']}",),
        ).fetchall()
    return [str(token) for (token,) in rows]


def renewals(platform: RunningPlatform, tenant: dict[str, Any]) -> list[dict[str, Any]]:
    with platform.api() as api:
        events = api.get("/v1/audit-events", params={"tenant_id": tenant["id"]}).json()["items"]
    return [e for e in events if e["action"] == RENEWED]


def log_everything_out(platform: RunningPlatform, tenant: dict[str, Any], token: str) -> None:
    base = f"{platform.proxy_url}/t/{tenant['slug']}"
    headers = {"Authorization": f"Bearer {token}"}
    done = httpx.post(f"{base}/_matrix/client/v3/logout/all", headers=headers, json={})
    assert done.status_code == 200, done.text
    whoami = httpx.get(f"{base}/_matrix/client/v3/account/whoami", headers=headers)
    assert whoami.status_code == 401  # the platform's stored token is dead now


def test_user_management_survives_a_logout_of_the_platform_admin(
    platform: RunningPlatform,
) -> None:
    tenant = platform.create_tenant("admin-heal")
    [token] = admin_tokens(platform, tenant)
    log_everything_out(platform, tenant, token)

    assert platform.create_user(tenant["id"], "after", "after-secret-123").startswith("@after:")
    [event] = renewals(platform, tenant)
    assert event["actor"] == "system" and event["target_id"] == tenant["id"]
    [renewed] = admin_tokens(platform, tenant)
    assert renewed != token
    assert renewed not in str(event)

    # Logged out again, several requests at once find the token dead: each succeeds, one
    # renewal is kept (and audited), and no spare admin session stays behind.
    log_everything_out(platform, tenant, renewed)

    def list_users(_: int) -> httpx.Response:
        with platform.api() as api:
            return api.get(f"/v1/tenants/{tenant['id']}/users")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(list_users, range(4)))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert all([u["username"] for u in a.json()["items"]] == ["after"] for a in answers)
    assert len(renewals(platform, tenant)) == 2
    assert len(admin_tokens(platform, tenant)) == 1


def test_usernames_cannot_steer_the_admin_api(platform: RunningPlatform) -> None:
    tenant = platform.create_tenant("admin-paths")
    tid = tenant["id"]
    platform.create_user(tid, "bob", "bob-secret-123")
    attack = "x/../../../v1/deactivate/bob"
    with platform.api() as api:
        refused = api.post(
            f"/v1/tenants/{tid}/users", json={"username": attack, "password": "long-enough"}
        )
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "username" in refused.json()["detail"]
        assert "a-z, 0-9 and . _ = -" in refused.json()["detail"]

        for name in ("Bob", "bob+1", "a" * 253, "bob%3Aother", "x%2F..%2Fv1%2Fdeactivate"):
            got = api.get(f"/v1/tenants/{tid}/users/{name}")
            assert got.status_code in (404, 422), (name, got.text)
            assert got.headers["content-type"].startswith("application/problem+json")
        wrong = api.patch(f"/v1/tenants/{tid}/users/Bob", json={"displayname": "x"})
        assert wrong.status_code == 422 and "username" in wrong.json()["detail"]
        too_long = api.post(
            f"/v1/tenants/{tid}/users", json={"username": "b" * 240, "password": "long-enough"}
        )
        assert too_long.status_code == 422 and "255" in too_long.json()["detail"]

        bob = api.get(f"/v1/tenants/{tid}/users/bob")
        assert bob.status_code == 200 and bob.json()["deactivated"] is False
        created = api.post(
            f"/v1/tenants/{tid}/users",
            json={"username": "carol.smith_2=x-y", "password": "carol-secret-1"},
        )
        assert created.status_code == 201, created.text
        got = api.get(f"/v1/tenants/{tid}/users/carol.smith_2=x-y")
        assert got.status_code == 200 and got.json()["user_id"].startswith("@carol.smith_2=x-y:")
