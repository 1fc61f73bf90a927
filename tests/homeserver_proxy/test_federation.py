"""Federation through the proxy, per tenant: server discovery, server-server forwarding only
for a tenant that federates, never billed, and rate-limited apart from the tenant's clients.
The proxy runs in-process (real Redis route table) in front of a recording stand-in homeserver."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import httpx
import pytest
import redis
from aiohttp import web

from homeserver_proxy.app import ProxyApp
from homeserver_proxy.asgi import Message
from homeserver_proxy.federation import FEDERATION_MAX_BODY, public_port
from platform_core.redis import keys_for
from platform_core.routes import Route, publish_route
from platform_core.settings import get_settings
from tests.helpers.stand_in import serving


@dataclass
class StandIn:
    """A homeserver stand-in: answers every request with 200 and records its path."""

    url: str = ""
    paths: list[str] = field(default_factory=list)


@pytest.fixture
async def upstream() -> AsyncIterator[StandIn]:
    stand_in = StandIn()

    async def answer(request: web.Request) -> web.Response:
        stand_in.paths.append(request.raw_path)
        return web.json_response({"server": {"name": "stand-in"}})

    async with serving(answer) as url:
        stand_in.url = url
        yield stand_in


Publish = Callable[..., Route]


@dataclass
class Proxy:
    app: ProxyApp
    client: httpx.AsyncClient
    publish: Publish

    async def get(self, path: str, host: str) -> httpx.Response:
        return await self.client.get(path, headers={"Host": host})


@asynccontextmanager
async def running_proxy(upstream: StandIn, public_url: str) -> AsyncIterator[Proxy]:
    settings = get_settings().model_copy(
        update={
            "redis_namespace": f"{get_settings().redis_namespace}-fed-{uuid.uuid4().hex[:6]}",
            "proxy_public_url": public_url,
        }
    )
    keys = keys_for(settings)
    sync_redis = redis.Redis.from_url(settings.require_redis_url())

    def publish(slug: str, **changes: object) -> Route:
        route = Route(
            tenant_id=str(uuid.uuid4()),
            slug=slug,
            server_name=f"{slug}.c3.test",
            upstream=upstream.url,
            status="active",
            max_upload_bytes=1024,
        )
        route = replace(route, **changes)  # type: ignore[arg-type]
        publish_route(sync_redis, keys, route)
        return route

    app = ProxyApp(settings)
    await app.forwarder.start()  # no route watcher or usage flusher: lookups ask Redis
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            yield Proxy(app, client, publish)
    finally:
        await app.forwarder.stop()
        await app.redis.aclose()
        sync_redis.delete(keys.routes)
        sync_redis.close()


@pytest.fixture
async def proxy(platform_env: dict[str, str], upstream: StandIn) -> AsyncIterator[Proxy]:
    async with running_proxy(upstream, "https://matrix.example.com") as running:
        yield running


SERVER_PATHS = [
    "/_matrix/federation/v1/version",
    "/_matrix/key/v2/server",
    "/_matrix/federation/v1/query/profile?user_id=%40ann%3Aopen.c3.test",
]


@pytest.mark.parametrize("mode", ["open", "allowlist"])
async def test_a_federating_tenant_publishes_delegation_and_takes_server_traffic(
    proxy: Proxy, upstream: StandIn, mode: str
) -> None:
    proxy.publish("open", federation=mode)
    well_known = await proxy.get("/.well-known/matrix/server", "open.c3.test")
    assert well_known.status_code == 200
    # https without a port: remote servers connect to 443, with the tenant's name as Host.
    assert well_known.json() == {"m.server": "open.c3.test:443"}
    for path in SERVER_PATHS:
        answer = await proxy.get(path, "OPEN.c3.test.:443")
        assert answer.status_code == 200, (path, answer.text)
        assert answer.json() == {"server": {"name": "stand-in"}}
    assert upstream.paths == SERVER_PATHS


async def test_a_tenant_that_does_not_federate_gets_no_server_traffic(
    proxy: Proxy, upstream: StandIn
) -> None:
    proxy.publish("closed")  # federation "off", the default
    proxy.publish("future", federation="mesh")  # a mode this proxy does not know: closed
    for host in ("closed.c3.test", "future.c3.test"):
        well_known = await proxy.get("/.well-known/matrix/server", host)
        assert well_known.status_code == 404
        assert well_known.json()["errcode"] == "M_NOT_FOUND"
        for path in SERVER_PATHS:
            answer = await proxy.get(path, host)
            assert answer.status_code == 404, (host, path)
            assert answer.json() == {
                "errcode": "M_UNRECOGNIZED",
                "error": "This homeserver does not federate",
            }
    assert upstream.paths == []


async def test_server_traffic_is_only_routed_by_host_not_by_slug(
    proxy: Proxy, upstream: StandIn
) -> None:
    proxy.publish("open", federation="open")
    answer = await proxy.get("/t/open/_matrix/federation/v1/version", "proxy")
    assert answer.status_code == 404 and answer.json()["errcode"] == "M_UNRECOGNIZED"
    assert upstream.paths == []


async def test_a_suspended_tenant_takes_no_server_traffic(proxy: Proxy, upstream: StandIn) -> None:
    proxy.publish("paused", federation="open", status="suspended")
    answer = await proxy.get("/_matrix/federation/v1/version", "paused.c3.test")
    assert answer.status_code == 403 and answer.json()["errcode"] == "M_FORBIDDEN"
    assert upstream.paths == []


FEDERATION_ADMIN_TRICKS = [
    "/_matrix/federation/../../_synapse/admin/v1/server_version",
    "/_matrix/federation/v1/../../../_synapse/admin/v1/server_version",
    "/_matrix/federation/%2e%2e/%2e%2e/_synapse/admin/v1/server_version",
    "/_matrix/federation/..%2f..%2f_synapse/admin/v1/server_version",
    "/_matrix/federation/%252e%252e/%252e%252e/_synapse/admin/v1/server_version",
    "/_matrix/key/..;/..;/_synapse/admin/v1/server_version",
    "/_matrix/key/v2/..\\..\\..\\_synapse/admin/v1/server_version",
    "/_matrix/%66ederation/v1/version",  # canonically federation, but not literally
    "/_matrix/federation%2f..%2f..%2f_synapse/admin/v1/server_version",
    "/_MATRIX/FEDERATION/v1/version",
]


async def test_the_admin_api_stays_unreachable_through_federation_paths(
    proxy: Proxy, upstream: StandIn
) -> None:
    proxy.publish("open", federation="open")
    for path in FEDERATION_ADMIN_TRICKS:
        status, body = await raw_get(proxy.app, path, "open.c3.test")
        assert status in (400, 404), (path, status)
        assert json.loads(body)["errcode"].startswith("M_"), path
    assert upstream.paths == []
    # The same way of sending does reach the homeserver with a plain server-server path.
    assert (await raw_get(proxy.app, "/_matrix/federation/v1/version", "open.c3.test"))[0] == 200
    assert upstream.paths == ["/_matrix/federation/v1/version"]


async def raw_get(app: ProxyApp, raw_path: str, host: str) -> tuple[int, bytes]:
    """Call the app with ``raw_path`` exactly as given (HTTP clients resolve dot segments
    before sending; an attacker's raw socket does not)."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "http_version": "1.1",
        "scheme": "http",
        "path": raw_path,
        "raw_path": raw_path.encode("latin-1"),
        "query_string": b"",
        "headers": [(b"host", host.encode())],
        "client": ("127.0.0.2", 5000),
    }
    await app(scope, receive, send)
    start, body = sent
    return start["status"], body["body"]


async def test_server_traffic_is_not_billed(proxy: Proxy, upstream: StandIn) -> None:
    route = proxy.publish("open", federation="open")
    for path in SERVER_PATHS:
        assert (await proxy.get(path, "open.c3.test")).status_code == 200
    assert proxy.app.meter.drain() is None  # nothing counted: no requests, bytes or users
    # A client request of the same tenant is (the meter itself works here).
    await proxy.get("/_matrix/client/versions", "open.c3.test")
    batch = proxy.app.meter.drain()
    assert batch is not None and route.tenant_id in str(batch)


async def test_a_transaction_is_not_capped_by_the_tenants_upload_limit(
    proxy: Proxy, upstream: StandIn
) -> None:
    proxy.publish("open", federation="open", max_upload_bytes=1024)
    send = "/_matrix/federation/v1/send/1700000000000"
    headers = {"Host": "open.c3.test", "Content-Type": "application/json"}
    transaction = b'{"pdus": [], "edus": [], "pad": "' + b"x" * 200_000 + b'"}'
    answer = await proxy.client.put(send, content=transaction, headers=headers)
    assert answer.status_code == 200
    # Past what Synapse itself accepts on any listener, the proxy refuses before forwarding.
    too_big = await proxy.client.put(
        send, content=b"x" * (FEDERATION_MAX_BODY + 1), headers=headers
    )
    assert too_big.status_code == 413 and too_big.json()["errcode"] == "M_TOO_LARGE"
    assert upstream.paths == [send]


async def test_remote_servers_cannot_use_up_the_clients_request_rate(
    proxy: Proxy, upstream: StandIn
) -> None:
    proxy.publish("busy", federation="open", rate_burst=3, rate_per_second=0.001)
    statuses = [
        (await proxy.get("/_matrix/federation/v1/version", "busy.c3.test")).status_code
        for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]  # remote servers are limited too …
    clients = []
    for n in range(4):  # four clients: each one's own share of the bucket is not the limit
        transport = httpx.ASGITransport(app=proxy.app, client=(f"192.0.2.{n}", 40000))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            answer = await client.get("/_matrix/client/versions", headers={"Host": "busy.c3.test"})
            clients.append(answer.status_code)
    assert clients == [200, 200, 200, 429]  # … but on their own bucket


async def test_a_custom_domain_gets_its_own_discovery_documents(
    platform_env: dict[str, str], upstream: StandIn
) -> None:
    async with running_proxy(upstream, "https://matrix.example.com:8448") as proxy:
        proxy.publish("own", server_name="chat.own-co.test", federation="open")
        client = await proxy.get("/.well-known/matrix/client", "Chat.Own-Co.test")
        assert client.json() == {"m.homeserver": {"base_url": "https://chat.own-co.test:8448"}}
        server = await proxy.get("/.well-known/matrix/server", "chat.own-co.test:8448")
        assert server.json() == {"m.server": "chat.own-co.test:8448"}
        answer = await proxy.get("/_matrix/key/v2/server", "chat.own-co.test:8448")
        assert answer.status_code == 200
    assert upstream.paths == ["/_matrix/key/v2/server"]


@pytest.mark.parametrize(
    ("public_url", "port"),
    [
        ("https://matrix.example.com", 443),
        ("https://matrix.example.com:8448", 8448),
        ("http://127.0.0.1:8080", 8080),
        ("http://c3.localhost", 80),
    ],
)
def test_the_delegated_port_is_the_proxys_public_port(public_url: str, port: int) -> None:
    assert public_port(public_url) == port
