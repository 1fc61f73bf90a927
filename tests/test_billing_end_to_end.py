"""End to end billing: real Synapse, real clients, proxies stopped gracefully and killed.

Billed usage must equal each homeserver's own record (its database) exactly, through client
retries and a graceful proxy stop; a ``kill -9`` may lose at most the last unflushed interval,
and the reconciliation reports that drift."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import nio
import pytest
import redis

from c3.local_run import free_port
from provisioner.backends.local import LocalBackend
from tests.helpers.matrix import login, usage_of
from tests.helpers.platform import RunningPlatform, poll, start_proxy

pytestmark = pytest.mark.e2e

MESSAGES_PER_TENANT = 150


def homeserver_counts(platform: RunningPlatform, tenant_id: str) -> dict[str, int]:
    counts = LocalBackend(platform.data_dir).usage_counts(tenant_id)
    assert counts is not None
    return counts


def usage_settled(platform: RunningPlatform) -> bool:
    """Every usage batch written so far has been applied (the stream is drained)."""
    client = redis.Redis.from_url(platform.env["C3_REDIS_URL"])
    try:
        stream = f"{platform.env['C3_REDIS_NAMESPACE']}:usage"
        return client.xlen(stream) == 0
    finally:
        client.close()


def latest_reconciliation(platform: RunningPlatform, tenant_id: str) -> dict[str, Any]:
    with platform.api() as api:
        items = api.get(f"/v1/tenants/{tenant_id}/usage/reconciliation").json()["items"]
    return {item["meter"]: item for item in reversed(items)}  # newest wins


def reconciled_after(platform: RunningPlatform, tenant_id: str, moment: datetime) -> dict | None:
    """The newest checks, once one read the homeserver after ``moment`` (an earlier check may
    have read it while messages were still in flight)."""
    checks = latest_reconciliation(platform, tenant_id)
    check = checks.get("messages")
    if check and datetime.fromisoformat(check["checked_at"]) > moment:
        return checks
    return None


async def send(client: nio.AsyncClient, room_id: str, body: str, txn: str) -> str:
    """Send with an explicit transaction id, retrying (same id) on rate limits like real
    clients do; returns the event id."""
    deadline = time.monotonic() + 60
    while True:
        response = await client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body}, tx_id=txn
        )
        if isinstance(response, nio.RoomSendResponse):
            return str(response.event_id)
        assert time.monotonic() < deadline, response
        await asyncio.sleep((getattr(response, "retry_after_ms", None) or 200) / 1000)


async def chat(base_url: str, user_id: str, password: str, start: int, count: int) -> None:
    """``count`` messages; one in five is retried 1-3 times with the same txnId, as a client
    does when it never saw the answer. Each retry must return the same event."""
    client = await login(base_url, user_id, password)
    try:
        room = await client.room_create(name="billing")
        assert isinstance(room, nio.RoomCreateResponse), room
        for i in range(start, start + count):
            txn = f"m{i}"
            event_id = await send(client, room.room_id, f"message {i}", txn)
            if i % 5 == 0:
                for _ in range(i // 5 % 3 + 1):
                    assert await send(client, room.room_id, f"message {i}", txn) == event_id
    finally:
        await client.close()


async def test_billed_messages_equal_the_homeservers_through_retries_and_sigterm(
    platform: RunningPlatform,
) -> None:
    tenants = [platform.create_tenant(slug) for slug in ("bill-one", "bill-two")]
    for tenant in tenants:
        platform.create_user(tenant["id"], "clerk", "clerk-secret-1")
    port = free_port()
    proxy = start_proxy(platform, port)
    half = MESSAGES_PER_TENANT // 2

    async def run_half(start: int) -> None:
        await asyncio.gather(
            *(
                chat(
                    f"{proxy.url}/t/{t['slug']}",
                    f"@clerk:{t['server_name']}",
                    "clerk-secret-1",
                    start,
                    half,
                )
                for t in tenants
            )
        )

    await run_half(0)
    # Graceful stop mid-run: whatever it counted since its last flush must still be billed.
    # (uvicorn re-raises SIGTERM after its clean shutdown, hence the signal's exit status.)
    assert proxy.terminate() in (0, -15)
    proxy = start_proxy(platform, port)
    try:
        await run_half(half)
    finally:
        proxy.terminate()

    for tenant in tenants:
        hs = homeserver_counts(platform, tenant["id"])
        assert hs["messages"] == MESSAGES_PER_TENANT  # the retries created no new events
        poll(
            lambda t=tenant: (
                usage_of(platform, t["id"])["messages"] == MESSAGES_PER_TENANT
                and usage_settled(platform)
            ),
            timeout=30,
            what=f"billed messages of {tenant['slug']} to reach the homeserver's count",
        )
        assert usage_of(platform, tenant["id"])["messages"] == hs["messages"]

    moment = datetime.now(UTC)
    for tenant in tenants:
        checks = poll(
            lambda t=tenant: reconciled_after(platform, t["id"], moment),
            timeout=30,
            what="a reconciliation check after the run",
        )
        assert checks["messages"]["drift"] == 0
        assert checks["messages"]["billed"] == checks["messages"]["homeserver"] == 150


async def test_kill_9_loses_at_most_the_last_flush_interval_and_reconciliation_sees_it(
    platform: RunningPlatform,
) -> None:
    tenant = platform.create_tenant("bill-kill")
    user = platform.create_user(tenant["id"], "rush", "rush-secret-12")
    proxy = start_proxy(platform, free_port())
    client = await login(f"{proxy.url}/t/{tenant['slug']}", user, "rush-secret-12")
    room = await client.room_create(name="rush")
    assert isinstance(room, nio.RoomCreateResponse), room
    completed: list[float] = []
    killed_at = 0.0
    try:
        for i in range(400):
            if i == 120:
                killed_at = time.monotonic()
                proxy.kill()
                break
            await send(client, room.room_id, f"rush {i}", f"r{i}")
            completed.append(time.monotonic())
    finally:
        await client.close()
    interval = float(platform.env.get("C3_USAGE_FLUSH_INTERVAL_S", "1"))
    # Messages answered within the last flush interval (plus the flush's own time) before
    # the kill are the only ones allowed to be lost.
    bound = sum(1 for t in completed if t > killed_at - interval - 0.5)

    poll(lambda: usage_settled(platform), timeout=30, what="the usage stream to drain")
    hs = homeserver_counts(platform, tenant["id"])["messages"]
    assert hs == 120
    billed = poll(
        lambda: usage_of(platform, tenant["id"])["messages"] or None,
        timeout=30,
        what="some billed messages",
    )
    assert 0 <= hs - billed <= bound, (hs, billed, bound)

    moment = datetime.now(UTC)
    checks = poll(
        lambda: reconciled_after(platform, tenant["id"], moment),
        timeout=30,
        what="a reconciliation check after the kill",
    )
    billed_now = usage_of(platform, tenant["id"])["messages"]
    assert checks["messages"]["drift"] == hs - billed_now, (checks, billed, billed_now)


async def test_calls_media_and_monthly_active_users_are_metered(
    platform: RunningPlatform,
) -> None:
    tenant = platform.create_tenant("bill-meters")
    tenant_id, server = tenant["id"], tenant["server_name"]
    for name in ("alice", "bob", "carol", "dave"):
        platform.create_user(tenant_id, name, f"{name}-secret-12")
    base = f"{platform.proxy_url}/t/{tenant['slug']}"
    alice = await login(base, f"@alice:{server}", "alice-secret-12")
    bob = await login(base, f"@bob:{server}", "bob-secret-12")
    try:
        room = await alice.room_create(name="calls", invite=[f"@bob:{server}"])
        assert isinstance(room, nio.RoomCreateResponse), room
        invite = await alice.room_send(
            room.room_id,
            "m.call.invite",
            {
                "call_id": "c1",
                "version": "1",
                "lifetime": 60000,
                "offer": {"type": "offer", "sdp": "v=0"},
            },
        )
        assert isinstance(invite, nio.RoomSendResponse), invite
        member_type = "org.matrix.msc3401.call.member"
        state_key = f"_@alice:{server}_DEVICE"
        joined = await alice.room_put_state(
            room.room_id,
            member_type,
            {"application": "m.call", "call_id": "", "scope": "m.room", "device_id": "DEVICE"},
            state_key=state_key,
        )
        assert isinstance(joined, nio.RoomPutStateResponse), joined
        left = await alice.room_put_state(room.room_id, member_type, {}, state_key=state_key)
        assert isinstance(left, nio.RoomPutStateResponse), left

        payload = b"x" * 4096
        upload, _ = await alice.upload(
            lambda *_: payload, content_type="application/octet-stream", filesize=len(payload)
        )
        assert isinstance(upload, nio.UploadResponse), upload
        download = await bob.download(upload.content_uri)
        assert isinstance(download, nio.DownloadResponse) and download.body == payload

        # carol never gets in: a wrong password, then a made-up token.
        async with httpx.AsyncClient(base_url=base) as raw:
            failed = await raw.post(
                "/_matrix/client/v3/login",
                json={"type": "m.login.password", "user": "carol", "password": "wrong"},
            )
            assert failed.status_code == 403
            bogus = await raw.get(
                "/_matrix/client/v3/account/whoami",
                headers={"Authorization": "Bearer syt_not_a_token"},
            )
            assert bogus.status_code == 401
            # dave logs in at his homeserver directly; the proxy first sees only his token.
            port = platform.homeserver_port(tenant_id)
            async with httpx.AsyncClient() as synapse:
                response = await synapse.post(
                    f"http://127.0.0.1:{port}/_matrix/client/v3/login",
                    json={"type": "m.login.password", "user": "dave", "password": "dave-secret-12"},
                )
            direct = response.json()
            synced = await raw.get(
                "/_matrix/client/v3/sync",
                params={"timeout": "0"},
                headers={"Authorization": f"Bearer {direct['access_token']}"},
            )
            assert synced.status_code == 200
    finally:
        await alice.close()
        await bob.close()

    def metered() -> dict[str, int] | None:
        usage = usage_of(platform, tenant_id)
        return usage if usage["active_users"] >= 3 and usage["media_egress_bytes"] else None

    usage = poll(metered, timeout=30, what="calls, media and active users to be billed")
    assert usage["calls"] == 2  # the invite and the join; leaving is not a call
    assert usage["messages"] == 1  # the invite is also a timeline event
    assert usage["media_bytes"] == 4096
    assert usage["media_egress_bytes"] >= 4096
    assert usage["active_users"] == 3  # alice, bob, dave; never carol
    assert homeserver_counts(platform, tenant_id)["media_bytes"] == 4096
