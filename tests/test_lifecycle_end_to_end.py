"""Lifecycle end to end on real Synapse: suspend and resume with the same users and history,
a plan change that reaches the running homeserver's config, and a killed homeserver that
reconcile brings back while clients recover through the proxy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import nio
import pytest

from tests.helpers.matrix import login, synapse_processes
from tests.helpers.platform import RunningPlatform, poll, wait_operation

pytestmark = pytest.mark.e2e


async def test_suspend_keeps_everything_and_resume_brings_it_back(
    platform: RunningPlatform,
) -> None:
    tenant = platform.create_tenant("life-suspend")
    user = platform.create_user(tenant["id"], "sam", "sam-secret-123")
    base = f"{platform.proxy_url}/t/{tenant['slug']}"
    client = await login(base, user, "sam-secret-123")
    room = await client.room_create(name="history")
    assert isinstance(room, nio.RoomCreateResponse), room
    sent = await client.room_send(
        room.room_id, "m.room.message", {"msgtype": "m.text", "body": "before the break"}
    )
    assert isinstance(sent, nio.RoomSendResponse), sent
    token = client.access_token
    await client.close()

    with platform.api() as api:
        accepted = api.post(f"/v1/tenants/{tenant['id']}/suspend")
        assert accepted.status_code == 202, accepted.text
    wait_operation(platform, accepted.json()["operation"]["url"])
    config = platform.homeserver_dir(tenant["id"]) / "homeserver.yaml"
    assert synapse_processes(config) == []  # stopped: nothing can reach it
    async with httpx.AsyncClient() as raw:
        refused = await raw.get(
            f"{base}/_matrix/client/v3/account/whoami",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert refused.status_code == 403
    assert refused.json()["errcode"] == "M_FORBIDDEN" and "suspended" in refused.json()["error"]
    with platform.api() as api:
        assert api.get(f"/v1/tenants/{tenant['id']}").json()["status"] == "suspended"
        resumed = api.post(f"/v1/tenants/{tenant['id']}/resume")
        assert resumed.status_code == 202, resumed.text
    wait_operation(platform, resumed.json()["operation"]["url"])

    client = await login(base, user, "sam-secret-123")
    try:
        history = await client.room_messages(room.room_id, start="", limit=20)
        assert isinstance(history, nio.RoomMessagesResponse), history
        bodies = [getattr(event, "body", None) for event in history.chunk]
        assert "before the break" in bodies
    finally:
        await client.close()


def test_a_plan_change_reaches_the_running_homeserver(platform: RunningPlatform) -> None:
    tenant = platform.create_tenant("life-plan")
    platform.create_user(tenant["id"], "pat", "pat-secret-123")
    base = f"{platform.proxy_url}/t/{tenant['slug']}"
    login_body = {"type": "m.login.password", "user": "pat", "password": "pat-secret-123"}
    token = httpx.post(f"{base}/_matrix/client/v3/login", json=login_body).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}

    def upload_limit() -> int | None:
        try:
            answer = httpx.get(f"{base}/_matrix/client/v1/media/config", headers=headers)
        except httpx.TransportError:
            return None
        return answer.json().get("m.upload.size") if answer.status_code == 200 else None

    assert upload_limit() == 50 * 1024 * 1024  # the default plan
    with platform.api() as api:
        api.post(
            "/v1/plans",
            json={
                "code": "life-small",
                "name": "Small uploads",
                "currency": "EUR",
                "limits": {"max_upload_size_bytes": 7 * 1024 * 1024},
            },
        )
        patched = api.patch(f"/v1/tenants/{tenant['id']}", json={"plan": "life-small"})
        assert patched.status_code == 200, patched.text
    wait_operation(platform, patched.headers["location"])
    # Synapse itself now enforces the new limit (it was restarted with the new config).
    assert poll(lambda: upload_limit() == 7 * 1024 * 1024, timeout=30, what="the new upload limit")
    too_big = httpx.post(
        f"{base}/_matrix/media/v3/upload",
        content=b"x" * (8 * 1024 * 1024),
        headers={**headers, "Content-Type": "application/octet-stream"},
    )
    assert too_big.status_code == 413


def test_a_killed_homeserver_is_restarted_and_clients_recover(platform: RunningPlatform) -> None:
    tenant = platform.create_tenant("life-crash")
    platform.create_user(tenant["id"], "cy", "cy-secret-1234")
    base = f"{platform.proxy_url}/t/{tenant['slug']}"
    login_body = {"type": "m.login.password", "user": "cy", "password": "cy-secret-1234"}
    token = httpx.post(f"{base}/_matrix/client/v3/login", json=login_body).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    config = platform.homeserver_dir(tenant["id"]) / "homeserver.yaml"
    (victim,) = synapse_processes(config)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)

    down = httpx.get(f"{base}/_matrix/client/v3/account/whoami", headers=headers)
    if down.status_code == 200:
        # The reconcile beat restarted it first: the platform counts a zombie as dead, and the
        # wait above lasts until init (here a VM's) reaps it, on its own time. A new one answers.
        assert down.json()["user_id"].startswith("@cy:")
        restarted = [p.pid for p in synapse_processes(config)]
        assert restarted and victim.pid not in restarted
    else:
        # Clients are told to retry (503: the proxy asked for a restart itself,
        # homeserver_proxy.wake; 502: the request met the dead homeserver's last pooled
        # connection).
        assert down.status_code in (502, 503) and down.headers["retry-after"]
    # Don't wait for the 30 s beat: ask for a reconcile now, as an operator would.
    subprocess.run(
        [sys.executable, "-m", "c3", "reconcile"],
        env={**os.environ, **platform.env, "C3_OPERATOR_TOKEN": platform.token},
        check=True,
        capture_output=True,
    )

    def recovered() -> bool:
        # Held while it restarts (homeserver_proxy.wake), up to C3_WAKE_TIMEOUT_S: a client
        # that waits that long gets its answer instead of an error.
        answer = httpx.get(f"{base}/_matrix/client/v3/account/whoami", headers=headers, timeout=60)
        return answer.status_code == 200

    poll(recovered, timeout=90, what="the homeserver to come back behind the proxy")
    assert len(synapse_processes(config)) == 1


def test_operators_manage_the_users_of_a_homeserver(platform: RunningPlatform) -> None:
    tenant = platform.create_tenant("life-users")
    tid = tenant["id"]
    for name in ("ann", "ben"):
        platform.create_user(tid, name, f"{name}-secret-123")
    base = f"{platform.proxy_url}/t/{tenant['slug']}"

    def login(user: str, password: str) -> httpx.Response:
        body = {"type": "m.login.password", "user": user, "password": password}
        return httpx.post(f"{base}/_matrix/client/v3/login", json=body)

    with platform.api() as api:
        first = api.get(f"/v1/tenants/{tid}/users", params={"limit": 1}).json()
        second = api.get(
            f"/v1/tenants/{tid}/users", params={"limit": 1, "cursor": first["next_cursor"]}
        ).json()
        names = [u["username"] for u in first["items"] + second["items"]]
        assert names == ["ann", "ben"]  # paged, and the platform's own admin is never listed
        assert api.get(f"/v1/tenants/{tid}/users/c3-admin").status_code == 404

        old_session = login("ann", "ann-secret-123").json()["access_token"]
        changed = api.patch(
            f"/v1/tenants/{tid}/users/ann",
            json={"displayname": "Ann A.", "password": "ann-new-secret-9"},
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["displayname"] == "Ann A."
        assert "ann-new-secret-9" not in changed.text
        whoami = httpx.get(
            f"{base}/_matrix/client/v3/account/whoami",
            headers={"Authorization": f"Bearer {old_session}"},
        )
        assert whoami.status_code == 401  # a reset password signs the user out everywhere
        assert login("ann", "ann-secret-123").status_code == 403
        assert login("ann", "ann-new-secret-9").status_code == 200

        gone = api.post(f"/v1/tenants/{tid}/users/ben/deactivate", json={"erase": True})
        assert gone.status_code == 200 and gone.json()["deactivated"] is True
        assert login("ben", "ben-secret-123").status_code == 403
        again = api.post(f"/v1/tenants/{tid}/users/ben/deactivate", json={"erase": True})
        assert again.status_code == 200  # repeating changes nothing
        assert api.get(f"/v1/tenants/{tid}/users/nobody").status_code == 404
        events = api.get("/v1/audit-events", params={"tenant_id": tid}).json()["items"]
        assert {"homeserver_user.update", "homeserver_user.deactivate"} <= {
            e["action"] for e in events
        }


def test_a_custom_domain_is_served_by_host(platform: RunningPlatform) -> None:
    with platform.api() as api:
        created = api.post(
            "/v1/tenants",
            json={"slug": "life-own", "display_name": "Own", "server_name": "chat.own-co.test"},
        )
        assert created.status_code == 202, created.text

        def active() -> bool:
            return api.get(f"/v1/tenants/{created.json()['id']}").json()["status"] == "active"

        poll(active, timeout=90, what="the custom-domain tenant to become active")
    platform.create_user(created.json()["id"], "dee", "dee-secret-123")
    host = {"Host": "chat.own-co.test"}
    login = httpx.post(
        f"{platform.proxy_url}/_matrix/client/v3/login",
        json={"type": "m.login.password", "user": "dee", "password": "dee-secret-123"},
        headers=host,
    )
    assert login.status_code == 200, login.text
    assert login.json()["user_id"] == "@dee:chat.own-co.test"
    well_known = httpx.get(f"{platform.proxy_url}/.well-known/matrix/client", headers=host)
    assert well_known.json()["m.homeserver"]["base_url"].startswith("http://chat.own-co.test")


def test_delete_with_purge_leaves_no_data_behind(platform: RunningPlatform) -> None:
    tenant = platform.create_tenant("life-purge")
    with platform.api() as api:
        accepted = api.delete(f"/v1/tenants/{tenant['id']}", params={"purge": "true"})
        assert accepted.status_code == 202, accepted.text
    operation = wait_operation(platform, accepted.json()["operation"]["url"])
    assert "data-purged" in operation["steps_done"]
    assert not platform.homeserver_dir(tenant["id"]).exists()
    assert list((platform.data_dir / "archive").glob(f"{tenant['id']}-*")) == []
