"""End to end: REST API -> Celery worker -> real Synapse -> proxy -> matrix-nio, and back to
usage. Runs the real `c3 up` against the test PostgreSQL/SQLite and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import uuid
from urllib.parse import quote

import aiohttp
import httpx
import nio
import psutil
import pytest

from tests.helpers.matrix import login, synapse_processes, usage_of
from tests.helpers.platform import RunningPlatform, poll

pytestmark = pytest.mark.e2e


async def test_tenant_lifecycle_with_real_client(platform: RunningPlatform) -> None:
    tenant = platform.create_tenant("acme")
    assert tenant["server_name"] == "acme.c3.test"
    tenant_id = tenant["id"]
    alice = platform.create_user(tenant_id, "alice", "alice-secret-1")
    bob = platform.create_user(tenant_id, "bob", "bob-secret-12")
    assert alice == "@alice:acme.c3.test"

    base_url = f"{platform.proxy_url}/t/acme"
    alice_client = await login(base_url, alice, "alice-secret-1")
    bob_client = await login(base_url, bob, "bob-secret-12")
    try:
        room = await alice_client.room_create(name="deals", invite=[bob])
        assert isinstance(room, nio.RoomCreateResponse), room
        joined = await bob_client.join(room.room_id)
        assert isinstance(joined, nio.JoinResponse), joined

        sent_ids = []
        for n in range(5):
            content = {"msgtype": "m.text", "body": f"message {n}"}
            first = await alice_client.room_send(
                room.room_id, "m.room.message", content, tx_id=f"tx{n}"
            )
            assert isinstance(first, nio.RoomSendResponse), first
            sent_ids.append(first.event_id)
            if n == 2:  # the client retries: same txnId, same event, billed once
                retry = await alice_client.room_send(
                    room.room_id, "m.room.message", content, tx_id=f"tx{n}"
                )
                assert isinstance(retry, nio.RoomSendResponse), retry
                assert retry.event_id == first.event_id

        seen: dict[str, str] = {}

        async def read_back() -> None:
            since = None
            while len(seen) < 5:
                response = await bob_client.sync(timeout=5000, since=since)
                assert isinstance(response, nio.SyncResponse), response
                since = response.next_batch
                timeline = response.rooms.join.get(room.room_id)
                for event in timeline.timeline.events if timeline else []:
                    if isinstance(event, nio.RoomMessageText):
                        seen[event.event_id] = event.body

        await asyncio.wait_for(read_back(), timeout=60)
        assert sorted(seen) == sorted(sent_ids)
        assert sorted(seen.values()) == [f"message {n}" for n in range(5)]

        # ~2 MB: large enough to stream through the proxy in many chunks both ways.
        payload = b"quarterly numbers\n" * 120_000
        upload, _ = await alice_client.upload(
            io.BytesIO(payload), content_type="text/plain", filename="q3.txt", filesize=len(payload)
        )
        assert isinstance(upload, nio.UploadResponse), upload
        download = await bob_client.download(upload.content_uri)
        assert isinstance(download, nio.MemoryDownloadResponse), download
        assert download.body == payload
    finally:
        await alice_client.close()
        await bob_client.close()

    def usage_caught_up() -> dict[str, int] | None:
        totals = usage_of(platform, tenant_id)
        # The upload and download were the last traffic: once their bytes show, all has.
        caught_up = totals["bytes_in"] > len(payload) and totals["bytes_out"] > len(payload)
        return totals if caught_up and totals["messages"] >= 5 else None

    totals = poll(usage_caught_up, timeout=30, what="usage to show the messages and the upload")
    assert totals["messages"] == 5
    assert totals["api_requests"] > 10
    assert totals["bytes_in"] > len(payload)
    assert totals["bytes_out"] > len(payload)

    # Delete: the route goes, the homeserver stops, the data is archived.
    config = platform.homeserver_dir(tenant_id) / "homeserver.yaml"
    assert synapse_processes(config), "the tenant's Synapse should run before deletion"
    with platform.api() as api:
        response = api.delete(f"/v1/tenants/{tenant_id}")
        assert response.status_code == 202, response.text
        operation_url = response.json()["operation"]["url"]
        poll(
            lambda: api.get(f"/v1/tenants/{tenant_id}").json()["status"] == "deleted",
            timeout=60,
            what="tenant to be deleted",
        )
        operation = api.get(operation_url).json()
        assert operation["state"] == "succeeded", operation

    def proxy_refuses() -> dict | None:
        answer = httpx.get(f"{base_url}/_matrix/client/versions")
        return answer.json() if answer.status_code == 404 else None

    error = poll(proxy_refuses, timeout=15, what="the proxy to stop routing the deleted tenant")
    assert error["errcode"] == "M_NOT_FOUND"
    assert synapse_processes(config) == []
    archives = list((platform.data_dir / "archive").glob(f"{tenant_id}-*.tar.gz"))
    assert len(archives) == 1 and archives[0].stat().st_size > 0


async def test_tenants_are_isolated(platform: RunningPlatform) -> None:
    a = platform.create_tenant("globex")
    b = platform.create_tenant("initech")
    platform.create_user(a["id"], "hank", "hank-secret-1")
    platform.create_user(b["id"], "peter", "peter-secret-1")
    proxy_host = platform.proxy_url.removeprefix("http://")
    port = proxy_host.split(":")[1]

    # Route by Host header: the way a real deployment reaches tenants.
    async with aiohttp.ClientSession() as http:
        login = await http.post(
            f"{platform.proxy_url}/_matrix/client/v3/login",
            headers={"Host": f"globex.c3.test:{port}"},
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "hank"},
                "password": "hank-secret-1",
            },
        )
        assert login.status == 200, await login.text()
        token = (await login.json())["access_token"]
        marker = uuid.uuid4().hex

        async def whoami(host: str) -> tuple[int, dict]:
            response = await http.get(
                f"{platform.proxy_url}/_matrix/client/v3/account/whoami?marker={marker}",
                headers={"Host": host, "Authorization": f"Bearer {token}"},
            )
            return response.status, await response.json()

        status, body = await whoami(f"globex.c3.test:{port}")
        assert status == 200 and body["user_id"] == "@hank:globex.c3.test"
        status, body = await whoami(f"initech.c3.test:{port}")
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"

    # Each request went to the homeserver its Host named, and nowhere else: A's login and
    # whoami reached A; B saw only the one request we deliberately sent it (and refused).
    a_log = access_log(platform, a["id"])
    b_log = access_log(platform, b["id"])
    assert sum(marker in line and " 200 " in line for line in a_log) == 1
    assert sum(marker in line for line in b_log) == 1
    assert sum(marker in line and " 401 " in line for line in b_log) == 1
    assert any("/_matrix/client/v3/login" in line for line in a_log)
    assert not any("/_matrix/client/v3/login" in line for line in b_log)


def access_log(platform: RunningPlatform, tenant_id: str) -> list[str]:
    """The homeserver's access-log lines (one per request it processed)."""
    text = (platform.homeserver_dir(tenant_id) / "homeserver.log").read_text()
    return [line for line in text.splitlines() if " - synapse.access." in line]


async def test_parked_long_polls_do_not_starve_other_traffic(platform: RunningPlatform) -> None:
    tenant = platform.create_tenant("umbrella")
    platform.create_user(tenant["id"], "carol", "carol-secret-1")
    platform.create_user(tenant["id"], "dave", "dave-secret-12")
    base_url = f"{platform.proxy_url}/t/umbrella"
    carol = await login(base_url, "@carol:umbrella.c3.test", "carol-secret-1")
    dave = await login(base_url, "@dave:umbrella.c3.test", "dave-secret-12")
    room = await carol.room_create(name="ops", invite=["@dave:umbrella.c3.test"])
    assert isinstance(room, nio.RoomCreateResponse), room
    assert isinstance(await dave.join(room.room_id), nio.JoinResponse)
    first = await dave.sync(timeout=0)
    assert isinstance(first, nio.SyncResponse), first

    upstream_port = platform.homeserver_port(tenant["id"])
    parked = 300
    # From four client addresses: one address alone gets only a share of the tenant's burst.
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, local_addr=(f"127.0.3.{n}", 0))
        )
        for n in range(1, 5)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for session in sessions:
            await stack.enter_async_context(session)
        url = f"{base_url}/_matrix/client/v3/sync?timeout=30000&since={first.next_batch}&filter={QUIET}"
        headers = {"Authorization": f"Bearer {dave.access_token}"}

        async def long_poll(http: aiohttp.ClientSession) -> int:
            async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=90)) as r:
                await r.read()
                return r.status

        polls = [asyncio.create_task(long_poll(sessions[n % 4])) for n in range(parked)]

        await asyncio.to_thread(
            poll,
            lambda: upstream_connections(upstream_port) >= parked,
            timeout=60,
            what=f"{parked} long-polls parked at the homeserver",
        )
        assert not any(p.done() for p in polls), "long-polls returned before anything happened"

        # An unrelated send while they are parked must go through at once.
        send = await asyncio.wait_for(
            carol.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "ping"}),
            timeout=10,
        )
        assert isinstance(send, nio.RoomSendResponse), send
        statuses = await asyncio.wait_for(asyncio.gather(*polls), timeout=90)
    assert statuses == [200] * parked
    await carol.close()
    await dave.close()


# Only room timeline changes wake these long-polls (not presence, typing or receipts), so
# they stay parked until the test itself sends something.
QUIET = quote(
    json.dumps(
        {
            "presence": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
            "room": {"ephemeral": {"not_types": ["*"]}, "account_data": {"not_types": ["*"]}},
        }
    )
)


def upstream_connections(port: int) -> int:
    """Open TCP connections to a homeserver's port (from the proxy, in these tests)."""
    return sum(
        1
        for c in psutil.net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED"
    )


async def test_long_polls_whose_clients_leave_release_the_homeserver(
    platform: RunningPlatform,
) -> None:
    tenant = platform.create_tenant("vandelay")
    platform.create_user(tenant["id"], "art", "art-secret-12")
    base_url = f"{platform.proxy_url}/t/vandelay"
    art = await login(base_url, "@art:vandelay.c3.test", "art-secret-12")
    first = await art.sync(timeout=0)
    assert isinstance(first, nio.SyncResponse), first
    await art.close()
    port = platform.homeserver_port(tenant["id"])

    parked = 50
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    url = f"{base_url}/_matrix/client/v3/sync?timeout=30000&since={first.next_batch}&filter={QUIET}"
    headers = {"Authorization": f"Bearer {art.access_token}"}

    async def long_poll() -> None:
        async with http.get(url, headers=headers) as response:
            await response.read()

    polls = [asyncio.create_task(long_poll()) for _ in range(parked)]
    await asyncio.to_thread(
        poll, lambda: upstream_connections(port) >= parked, timeout=60, what="parked long-polls"
    )
    for task in polls:  # the clients go away (app closed, network gone)
        task.cancel()
    await asyncio.gather(*polls, return_exceptions=True)
    await http.close()
    # Well before the 30 s long-poll timeout, the proxy has dropped the upstream requests.
    await asyncio.to_thread(
        poll,
        lambda: upstream_connections(port) <= 5,
        timeout=10,
        what="upstream connections to be released",
    )


def raw_request(proxy_url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as-is (for what HTTP clients refuse to send) and read the status line."""
    host, port = proxy_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        while len(body) < length:
            body += sock.recv(65536)
    return int(head.split(b" ")[1]), body


def test_proxy_edges_against_a_real_homeserver(platform: RunningPlatform) -> None:
    tenant = platform.create_tenant("hooli")
    port = platform.proxy_url.rsplit(":", 1)[1]
    host = f"hooli.c3.test:{port}"

    with httpx.Client(base_url=platform.proxy_url, timeout=10) as http:
        unknown_host = http.get("/_matrix/client/versions", headers={"Host": "nobody.c3.test"})
        assert unknown_host.status_code == 421
        assert unknown_host.json()["errcode"] == "M_UNRECOGNIZED"
        unknown_slug = http.get("/t/nobody/_matrix/client/versions")
        assert unknown_slug.status_code == 404 and unknown_slug.json()["errcode"] == "M_NOT_FOUND"

        well_known = http.get("/.well-known/matrix/client", headers={"Host": host})
        assert well_known.json() == {"m.homeserver": {"base_url": f"http://{host}"}}
        by_path = http.get("/t/hooli/.well-known/matrix/client").json()
        assert by_path == {"m.homeserver": {"base_url": f"{platform.proxy_url}/t/hooli"}}

        for path in (
            "/_synapse/admin/v1/server_version",
            "/_synapse/%61dmin/v1/server_version",
            "/_matrix/client/../../_synapse/admin/v1/server_version",
            "/_matrix/client/%2e%2e/%2e%2e/_synapse/admin/v1/server_version",
            "//_synapse/admin/v1/server_version",
            "/_SYNAPSE/admin/v1/server_version",
        ):
            for prefix, headers in (("", {"Host": host}), ("/t/hooli", {})):
                status, body = raw_request(
                    platform.proxy_url,
                    f"GET {prefix}{path} HTTP/1.1\r\nHost: {headers.get('Host', 'x')}\r\n"
                    "Connection: close\r\n\r\n".encode(),
                )
                assert status in (400, 404), (path, status)
                assert b"M_UNRECOGNIZED" in body

        spoofed = http.get(
            "/t/hooli/_matrix/client/versions?xff-probe=1",
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
        assert spoofed.status_code == 200

    # Oversized body: refused from the declared length, before anything goes upstream.
    status, body = raw_request(
        platform.proxy_url,
        b"POST /t/hooli/_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 600000000\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status == 413 and b"M_TOO_LARGE" in body

    log = access_log(platform, tenant["id"])
    # (The platform's own admin registration at provisioning is direct, not through the proxy.)
    assert not any("server_version" in line for line in log), "an admin request got through"
    assert not any("/upload" in line for line in log)
    [probe] = [line for line in log if "xff-probe" in line]
    assert "203.0.113.9" not in probe  # the proxy overwrote the spoofed client address
