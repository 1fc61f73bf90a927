"""The proxy's fast lane (homeserver_proxy.relay) on a real socket: ``c3 proxy``'s protocol and
``ProxyApp`` in-process (uvicorn, real Redis route table) in front of a recording stand-in
homeserver. Plain requests are relayed with the same headers, answers, limits and meters as the
ASGI path; everything else still goes through the app, on the same connection."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, cast

import httpx
import pytest
import redis
import uvicorn
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from c3.local_run import free_port
from homeserver_proxy import relay as relay_module
from homeserver_proxy.app import ProxyApp
from homeserver_proxy.relay import RelayProtocol
from platform_core.http_wall import MATRIX_ANSWERS, guarded_protocol
from platform_core.redis import keys_for
from platform_core.routes import Route, publish_route
from platform_core.settings import get_settings
from tests.helpers.platform import poll_async
from tests.helpers.stand_in import serving, uvicorn_serving

HEADER_TIMEOUT_S = 0.5
SEND = "/_matrix/client/v3/rooms/!r:acme.c3.test/send/m.room.message/"
SYNC = "/_matrix/client/v3/sync"


@dataclass
class StandIn:
    """Records every request (path, headers, body, connection) and answers by path."""

    url: str = ""
    seen: list[dict] = field(default_factory=list)
    big: bytes = b""

    async def answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        transport = request.transport
        self.seen.append(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": [(k.decode().lower(), v.decode()) for k, v in request.raw_headers],
                "body": body,
                "connection": transport.get_extra_info("peername"),  # the proxy's end
            }
        )
        path = request.path
        if "/send/" in path:
            return web.json_response({"event_id": f"$e{len(self.seen)}"})
        if path.endswith("/sync"):
            return web.json_response({"next_batch": "s2"})
        if path.endswith("/login"):
            return web.json_response(
                {
                    "user_id": "@ann:acme.c3.test",
                    "access_token": "t0k",
                    "device_id": "D",
                    "well_known": {"m.homeserver": {"base_url": "http://127.0.0.1:1"}},
                }
            )
        if path.endswith("/chunked"):
            response = web.StreamResponse(headers={"Server": "Synapse/1.0"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for piece in (b'{"a":', b'"b"', b"}"):
                await response.write(piece)
            await response.write_eof()
            return response
        if path.endswith("/big"):
            return web.Response(body=self.big, content_type="application/octet-stream")
        if path.endswith("/empty"):
            return web.Response(status=204)
        return web.json_response(
            {"versions": ["v1.11"]}, headers={"Server": "Synapse/1.0", "X-Request-Id": "theirs"}
        )


@dataclass
class Relay:
    app: ProxyApp
    url: str
    port: int
    stand_in: StandIn
    route: Route
    publish: object

    async def raw(self, data: bytes, *, read_until_close: bool = False) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            if read_until_close:
                return await asyncio.wait_for(reader.read(), timeout=10)
            return await asyncio.wait_for(read_answer(reader), timeout=10)
        finally:
            writer.close()


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One answer with a Content-Length body, head included."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    recorder = StandIn(big=bytes(range(256)) * 40_000)  # ~10 MB
    async with serving(recorder.answer) as url:
        recorder.url = url
        yield recorder


@pytest.fixture
async def relay(platform_env: dict[str, str], stand_in: StandIn) -> AsyncIterator[Relay]:
    port = free_port()
    settings = get_settings().model_copy(
        update={
            "redis_namespace": f"{get_settings().redis_namespace}-relay-{uuid.uuid4().hex[:6]}",
            "proxy_public_url": f"http://127.0.0.1:{port}",
        }
    )
    keys = keys_for(settings)
    sync_redis = redis.Redis.from_url(settings.require_redis_url())

    def publish(route: Route) -> Route:
        publish_route(sync_redis, keys, route)
        return route

    route = publish(
        Route(
            tenant_id=str(uuid.uuid4()),
            slug="acme",
            server_name="acme.c3.test",
            upstream=stand_in.url,
            status="active",
            max_upload_bytes=4096,
        )
    )
    app = ProxyApp(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=guarded_protocol(
            base=RelayProtocol, answers=MATRIX_ANSWERS, header_timeout=HEADER_TIMEOUT_S
        ),
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=False,  # as c3 proxy
        server_header=False,
        date_header=False,
    )
    try:
        async with uvicorn_serving(config):
            yield Relay(app, f"http://127.0.0.1:{port}", port, stand_in, route, publish)
    finally:
        sync_redis.delete(keys.routes)
        sync_redis.close()


def relayed(app: ProxyApp) -> int:
    return app.metrics.relayed


HOST = {"Host": "acme.c3.test"}


async def test_a_plain_request_is_relayed_with_the_headers_the_app_sends(relay: Relay) -> None:
    async with httpx.AsyncClient(base_url=relay.url) as client:
        answer = await client.get(
            "/_matrix/client/versions?x=1",
            headers={
                **HOST,
                "X-Forwarded-For": "6.6.6.6",
                "X_Forwarded_For": "6.6.6.6",
                "Proxy-Authorization": "secret",
                "X-Request-Id": "req-abc-123",
                "Authorization": "Bearer tok",
            },
        )
    assert answer.status_code == 200 and answer.json() == {"versions": ["v1.11"]}
    assert answer.headers["x-request-id"] == "req-abc-123"  # ours, never the homeserver's
    assert "server" not in answer.headers
    assert relayed(relay.app) == 1
    seen = relay.stand_in.seen[-1]
    headers = dict(seen["headers"])
    assert seen["path"] == "/_matrix/client/versions?x=1"
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the peer: no proxy in front is trusted
    assert headers["host"] == headers["x-forwarded-host"] == "acme.c3.test"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-request-id"] == "req-abc-123"
    assert headers["authorization"] == "Bearer tok"
    names = [name for name, _ in seen["headers"]]
    assert "proxy-authorization" not in names and "x_forwarded_for" not in names
    assert names.count("x-forwarded-for") == 1


async def test_requests_on_one_connection_share_one_homeserver_connection(relay: Relay) -> None:
    async with httpx.AsyncClient(base_url=relay.url) as client:
        for _ in range(5):
            answer = await client.get("/t/acme/_matrix/client/versions")
            assert answer.status_code == 200
    assert relayed(relay.app) == 5
    assert len({seen["connection"] for seen in relay.stand_in.seen}) == 1


async def test_each_request_on_a_connection_goes_on_with_its_own_headers(relay: Relay) -> None:
    """The lane reuses what it made of a connection's last header lines only when the next
    request repeats them byte for byte."""
    async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
        for token in ("ann", "ann", "bob", "ann"):
            answer = await client.get(
                "/_matrix/client/versions", headers={"Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 200
        await client.put(SEND + "h1", content=b"{}")
        await client.put(SEND + "h2", content=b'{"body": "x"}')
    assert relayed(relay.app) == 6
    relayed_here = [each for each in relay.stand_in.seen if "whoami" not in each["path"]]
    seen = [dict(each["headers"]) for each in relayed_here]  # (metering asks whoami of tokens)
    assert [each.get("authorization") for each in seen[:4]] == [
        "Bearer ann",
        "Bearer ann",
        "Bearer bob",
        "Bearer ann",
    ]
    assert [each["content-length"] for each in seen[4:]] == ["2", "13"]
    assert [each["body"] for each in relayed_here[4:]] == [b"{}", b'{"body": "x"}']
    assert len({each["x-request-id"] for each in seen}) == 6  # a new id for each


@pytest.mark.parametrize(
    "send",
    [SEND, SEND.replace("!r:acme.c3.test", "%21r%3Aacme.c3.test")],
    ids=["plain-room-id", "room-id-encoded-as-sdks-send-it"],
)
async def test_a_send_is_relayed_and_billed_once(relay: Relay, send: str) -> None:
    # The room's first send is planned in full, the next ones from it (a new txn id each). A
    # txn id may be any word, "sync" too: a send all the same.
    txns = ["sync", "txn2", "txn3"]
    event_ids = []
    async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
        for n, txn in enumerate(txns, start=1):
            body = {"msgtype": "m.text", "body": f"hi {n}"}
            answer = await client.put(send + txn, json=body)
            assert answer.status_code == 200 and answer.json()["event_id"].startswith("$e")
            event_ids.append(answer.json()["event_id"])
            assert relayed(relay.app) == n
            assert (
                relay.stand_in.seen[-1]["body"] == json.dumps(body, separators=(",", ":")).encode()
            )
            assert relay.stand_in.seen[-1]["path"] == send + txn  # as the client wrote it
    sends = relay.app.metrics.registry.get_sample_value(
        "c3_proxy_requests_total", {"route": "send", "status": "2xx"}
    )
    assert sends == len(txns)  # counted as sends, as the app counts them
    for histogram in ("request_duration", "upstream_first_byte"):
        count = relay.app.metrics.registry.get_sample_value(
            f"c3_proxy_{histogram}_seconds_count", {"route": "send"}
        )
        assert count == len(txns), histogram  # each timed once, and its first byte too
    usage = relay.app.meter.drain()
    assert usage is not None
    assert len(set(event_ids)) == len(txns)
    assert [json.dumps(usage).count(event_id) for event_id in event_ids] == [1] * len(txns)


async def test_read_receipts_are_relayed_each_with_its_own_event_id(relay: Relay) -> None:
    # SDKs send an event id's "$" as %24; the room's first receipt is planned in full, the
    # next ones from it.
    receipt = "/_matrix/client/v3/rooms/%21r%3Aacme.c3.test/receipt/m.read/"
    ids = ["events", "%24second", "$third", "%24fourth"]  # an id may be "events": not a sync
    async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
        for n, event_id in enumerate(ids, start=1):
            answer = await client.post(receipt + event_id, json={})
            assert answer.status_code == 200
            assert relayed(relay.app) == n
            assert relay.stand_in.seen[-1]["path"] == receipt + event_id
    others = relay.app.metrics.registry.get_sample_value(
        "c3_proxy_requests_total", {"route": "other", "status": "2xx"}
    )
    assert others == len(ids)  # none counted as a sync, whatever its id


async def test_to_device_messages_are_relayed_each_with_its_own_txn_id(relay: Relay) -> None:
    # End-to-end encryption's keys travel as to-device messages, each with a txn id of its own;
    # the type's first is planned in full, the next ones from it.
    to_device = "/_matrix/client/v3/sendToDevice/m.room.encrypted/"
    body = {"messages": {"@alice:acme.c3.test": {"DEVICE": {"algorithm": "m.olm.v1"}}}}
    txns = ["sync", "txn2", "events"]  # a txn id may be "sync" or "events": not a sync
    async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
        for n, txn in enumerate(txns, start=1):
            answer = await client.put(to_device + txn, json=body)
            assert answer.status_code == 200
            assert relayed(relay.app) == n
            assert relay.stand_in.seen[-1]["path"] == to_device + txn
            assert (
                relay.stand_in.seen[-1]["body"] == json.dumps(body, separators=(",", ":")).encode()
            )
    others = relay.app.metrics.registry.get_sample_value(
        "c3_proxy_requests_total", {"route": "other", "status": "2xx"}
    )
    assert others == len(txns)  # none counted as a sync or a send
    usage = relay.app.meter.drain()
    assert usage is not None
    meters = {meter: quantity for _, _, meter, quantity in usage["usage"]}
    assert meters["api_requests"] == len(txns)  # each metered once
    assert "messages" not in meters and usage["events"] == []  # and none billed as a message


async def test_a_token_in_the_header_or_the_query_makes_its_user_active(relay: Relay) -> None:
    tenant = relay.route.tenant_id
    relay.app.token_users.remember(tenant, "tok-ann", "@ann:acme.c3.test")
    relay.app.token_users.remember(tenant, "tok-bob", "@bob:acme.c3.test")
    relay.app.token_users.remember(tenant, "tok-cy", "@cy:acme.c3.test")
    async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
        for _ in range(2):  # the second time with the header lines the lane has seen
            await client.get(
                "/_matrix/client/versions", headers={"Authorization": "Bearer tok-ann"}
            )
        await client.get("/_matrix/client/versions?access_token=tok-bob")
        await client.get("/_matrix/client/versions", headers={"Authorization": "Basic tok-cy"})
    assert relayed(relay.app) == 4
    usage = relay.app.meter.drain()
    assert usage is not None
    text = json.dumps(usage)
    assert "@ann:acme.c3.test" in text and "@bob:acme.c3.test" in text
    assert "@cy:acme.c3.test" not in text  # not a bearer token: nobody's


def active_users(usage: dict[str, object] | None) -> set[tuple[str, str]]:
    """(tenant, "<month>|<user>") of each active user a drained batch reports."""
    assert usage is not None
    return {
        (event[0], event[2])
        for event in cast(list[list[Any]], usage["events"])
        if event[1] == "active_users"
    }


async def test_a_connections_token_counts_its_own_user_per_tenant_and_again_next_month(
    relay: Relay,
) -> None:
    """The lane keeps a token's user with the connection's header lines once metering knows
    it; that is the same tenant's user, request after request, month after month."""
    acme = relay.route.tenant_id
    beta = relay.publish(
        replace(relay.route, tenant_id=str(uuid.uuid4()), slug="beta", server_name="beta.c3.test")
    )
    relay.app.token_users.remember(acme, "tok-ann", "@ann:acme.c3.test")
    relay.app.token_users.remember(beta.tenant_id, "tok-ann", "@ann:beta.c3.test")
    this_month = time.time()
    next_month = this_month + 32 * 86_400
    relay.app.meter._clock = lambda: this_month
    bearer = {"Authorization": "Bearer tok-ann"}
    async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
        for path in ["/t/acme/_matrix/client/versions"] * 2 + [
            "/t/beta/_matrix/client/versions"
        ] * 2:
            assert (await client.get(path, headers=bearer)).status_code == 200
        first = active_users(relay.app.meter.drain())
        relay.app.meter._clock = lambda: next_month
        for path in ["/t/acme/_matrix/client/versions", "/t/beta/_matrix/client/versions"]:
            assert (await client.get(path, headers=bearer)).status_code == 200
        second = active_users(relay.app.meter.drain())
    assert relayed(relay.app) >= 4  # the lane took them (a tenant new to it goes via the app)
    months = [time.strftime("%Y-%m", time.gmtime(when)) for when in (this_month, next_month)]
    for month, reported in zip(months, (first, second), strict=True):
        assert reported == {
            (acme, f"{month}|@ann:acme.c3.test"),
            (beta.tenant_id, f"{month}|@ann:beta.c3.test"),
        }


async def test_a_login_goes_through_the_app_and_the_connection_comes_back(relay: Relay) -> None:
    async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
        login = await client.post("/_matrix/client/v3/login", json={"type": "m.login.password"})
        after = await client.get("/_matrix/client/versions")
    # The app rewrote the answer (the way this client came in), which the lane never does.
    assert login.json()["well_known"]["m.homeserver"]["base_url"].startswith("http://acme.c3.test")
    assert after.status_code == 200
    assert relayed(relay.app) == 1  # the second request only


async def test_a_chunked_answer_and_a_large_one_arrive_whole(relay: Relay) -> None:
    async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
        chunked = await client.get("/_matrix/client/v3/chunked")
        big = await client.get("/_matrix/media/v3/big")
        empty = await client.get("/_matrix/client/v3/empty")
        again = await client.get("/_matrix/client/versions")
    assert chunked.json() == {"a": "b"} and "server" not in chunked.headers
    assert big.content == relay.stand_in.big
    assert empty.status_code == 204 and empty.content == b""
    assert again.status_code == 200
    assert relayed(relay.app) == 4


async def test_an_answer_that_ends_with_its_connection_arrives_whole(relay: Relay) -> None:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        )
        writer.write(b'{"old": "server"}')
        await writer.drain()
        writer.close()

    homeserver = await asyncio.start_server(closing, "127.0.0.1", 0)
    port = homeserver.sockets[0].getsockname()[1]
    relay.publish(replace(relay.route, upstream=f"http://127.0.0.1:{port}"))
    await poll_async(_upstream_is(relay.app, port), timeout=10, what="the proxy to see the route")
    async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
        first = await client.get("/_matrix/client/versions")
        second = await client.get("/_matrix/client/versions")
    homeserver.close()
    assert first.json() == second.json() == {"old": "server"}
    assert relayed(relay.app) == 2


SYNAPSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: Synapse/1.163.2\r\nDate: Sat, 05 Dec 2026 03:57:00 GMT\r\n"
    b"Cache-Control: public, max-age=600\r\nVary: Authorization\r\n"
    b"Content-Type: application/json\r\nAccess-Control-Allow-Origin: *\r\n"
    b"X-Request-Id: theirs\r\n"
)
BODY = b'{"versions": ["v1.11", "v1.12"]}'


async def _homeserver_writing(
    relay: Relay, framings: Iterator[bytes], connections: list[asyncio.StreamWriter]
) -> asyncio.Server:
    """A homeserver, now the tenant's, that answers each request with ``SYNAPSE_HEAD`` and the
    next of ``framings`` in one write; ``connections`` gets each connection made to it."""

    async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError):
            for framing in framings:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(SYNAPSE_HEAD + framing)

    homeserver = await asyncio.start_server(answering, "127.0.0.1", 0)
    port = homeserver.sockets[0].getsockname()[1]
    relay.publish(replace(relay.route, upstream=f"http://127.0.0.1:{port}"))
    await poll_async(_upstream_is(relay.app, port), timeout=10, what="the proxy to see the route")
    return homeserver


@pytest.mark.parametrize(
    "framing",
    [
        # Synapse's own: one chunk and the last one, written at once.
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY),
        b"Transfer-Encoding: chunked\r\n\r\n5\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (BODY[:5], len(BODY) - 5, BODY[5:]),
        b"Transfer-Encoding: chunked\r\n\r\n%x;x=1\r\n%s\r\n0\r\nX-T: 1\r\n\r\n"
        % (len(BODY), BODY),
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n000\r\n\r\n" % (len(BODY), BODY),
        b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY),
        b"content-length: %d\r\nConnection: keep-alive\r\n\r\n%s" % (len(BODY), BODY),
    ],
    ids=[
        "one-chunk",
        "two-chunks",
        "extension-and-trailer",
        "last-chunk-zeros",
        "length",
        "keep-alive",
    ],
)
async def test_an_answer_in_one_read_is_relayed_as_the_app_relays_it(
    relay: Relay, framing: bytes
) -> None:
    """The lane's own reading of a whole answer (``_whole_answer``) or llhttp's: the client
    gets the body and the headers the app gives it, on a connection that stays in use."""
    connections: list[asyncio.StreamWriter] = []
    homeserver = await _homeserver_writing(relay, itertools.repeat(framing), connections)
    try:
        async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
            lane = [await client.get("/_matrix/client/versions") for _ in range(3)]
        assert relayed(relay.app) == 3
        relay.app.settings = relay.app.settings.model_copy(update={"proxy_relay": False})
        async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
            app = await client.get("/_matrix/client/versions")
        assert relayed(relay.app) == 3
    finally:
        homeserver.close()
    framing_names = {"content-length", "transfer-encoding", "x-request-id"}

    def headers(answer: httpx.Response) -> list[tuple[str, str]]:
        return sorted((k, v) for k, v in answer.headers.items() if k not in framing_names)

    for answer in lane:
        assert answer.status_code == 200 and answer.content == BODY
        assert headers(answer) == headers(app)
        assert "server" not in answer.headers and answer.headers["x-request-id"] != "theirs"
        assert answer.headers["vary"] == "Authorization"
    assert app.content == BODY
    assert len(connections) == 2  # one kept for the lane's three, one of the app's client


async def test_answers_with_other_heads_on_one_connection_arrive_whole(relay: Relay) -> None:
    """The lane keeps each homeserver connection's last answer head: an answer whose head
    differs only a little (a longer length, another framing) is read as its own."""
    bodies = [b"short", b"x" * 50, b"chunked one", b"two" + b"-" * 40, b"short", b"y" * 500]
    framings = [
        b"Content-Length: 5\r\n\r\n" + bodies[0],
        b"Content-Length: 50\r\n\r\n" + bodies[1],
        b"Transfer-Encoding: chunked\r\n\r\nb\r\n" + bodies[2] + b"\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n28\r\n" + bodies[3][3:] + b"\r\n0\r\n\r\n",
        b"Content-Length: 5\r\n\r\n" + bodies[4],
        b"Transfer-Encoding: chunked\r\n\r\n1f4\r\n" + bodies[5] + b"\r\n0\r\n\r\n",
    ]
    connections: list[asyncio.StreamWriter] = []
    homeserver = await _homeserver_writing(relay, iter(framings), connections)
    try:
        async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
            answers = [await client.get("/_matrix/client/versions") for _ in framings]
    finally:
        homeserver.close()
    assert [answer.content for answer in answers] == bodies
    assert all(answer.headers["content-length"] == str(len(answer.content)) for answer in answers)
    assert relayed(relay.app) == len(framings) and len(connections) == 1


async def test_pipelined_requests_are_answered_in_order(relay: Relay) -> None:
    request = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: acme.c3.test\r\n\r\n"
    last = b"PUT " + SEND.encode() + b"t2 HTTP/1.1\r\nHost: acme.c3.test\r\n"
    last += b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    answers = await relay.raw(request * 2 + last, read_until_close=True)
    assert answers.count(b"HTTP/1.1 200 OK") == 3
    assert answers.rindex(b"versions") < answers.index(b"event_id")
    assert relayed(relay.app) == 3


async def test_a_rate_limited_tenant_is_refused_before_its_homeserver(relay: Relay) -> None:
    relay.publish(replace(relay.route, rate_per_second=0.01, rate_burst=1))
    await poll_async(
        lambda: _route(relay.app).rate_per_second == 0.01,
        timeout=10,
        what="the proxy to see the new limits",
    )
    before = len(relay.stand_in.seen)
    async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
        first = await client.get("/_matrix/client/versions")
        second = await client.get("/_matrix/client/versions")
    assert first.status_code == 200
    assert second.status_code == 429 and second.json()["errcode"] == "M_LIMIT_EXCEEDED"
    assert second.json()["retry_after_ms"] > 0 and second.headers["x-request-id"]
    assert len(relay.stand_in.seen) == before + 1


def _route(app: ProxyApp) -> Route:
    route = app.routes.get_cached("host:acme.c3.test")
    assert route is not None
    return route


async def test_a_long_poll_whose_client_hangs_up_frees_the_homeserver(relay: Relay) -> None:
    held: list[bytes] = []
    closed: list[float] = []

    async def holding(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.read()  # b"" once the proxy closes its end
        closed.append(time.monotonic())
        writer.close()

    homeserver = await asyncio.start_server(holding, "127.0.0.1", 0)
    port = homeserver.sockets[0].getsockname()[1]
    relay.publish(replace(relay.route, upstream=f"http://127.0.0.1:{port}"))
    await poll_async(_upstream_is(relay.app, port), timeout=10, what="the proxy to see the route")
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(
        b"GET " + SYNC.encode() + b"?timeout=30000&since=s1 HTTP/1.1\r\nHost: acme.c3.test\r\n\r\n"
    )
    await poll_async(
        lambda: relay.app.metrics.open_long_polls == 1 and bool(held),
        timeout=5,
        what="the poll to be parked at the homeserver",
    )
    hung_up = time.monotonic()
    writer.close()
    await poll_async(lambda: bool(closed), timeout=5, what="the homeserver connection to close")
    homeserver.close()
    assert closed[0] - hung_up < 1.0  # not at the poll's 30 s
    assert relay.app.metrics.open_long_polls == 0 and relayed(relay.app) == 1


async def test_a_homeserver_refusing_connections_is_healed_and_the_client_told_to_retry(
    relay: Relay,
) -> None:
    dead = free_port()
    relay.publish(replace(relay.route, upstream=f"http://127.0.0.1:{dead}"))
    await poll_async(_upstream_is(relay.app, dead), timeout=10, what="the proxy to see the route")
    async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
        answer = await client.get("/_matrix/client/versions")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json()["errcode"] == "M_UNKNOWN"
    assert relay.route.tenant_id in relay.app.wake._healing  # a restart was asked for


async def test_a_tenant_at_its_concurrency_limit_gets_a_fast_503_in_the_lane(
    relay: Relay,
) -> None:
    """The lane holds a tenant slot from sending a request upstream until its answer: with one
    slot, a second request while the first waits at its homeserver is refused at once (never
    sent), and the slot is free again once the first is answered."""
    heads: list[bytes] = []
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        writer.close()

    homeserver = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = homeserver.sockets[0].getsockname()[1]
    relay.publish(replace(relay.route, upstream=f"http://127.0.0.1:{port}", max_concurrent=1))
    await poll_async(
        lambda: _route(relay.app).max_concurrent == 1 and _upstream_is(relay.app, port)(),
        timeout=10,
        what="the proxy to see the route",
    )
    try:
        async with (
            httpx.AsyncClient(base_url=relay.url, headers=HOST) as first_client,
            httpx.AsyncClient(base_url=relay.url, headers=HOST) as second_client,
        ):
            first = asyncio.create_task(first_client.get("/_matrix/client/versions"))
            await poll_async(lambda: len(heads) == 1, timeout=5, what="the first request upstream")
            assert relay.app.limiter.in_flight(relay.route.tenant_id) == 1
            started = time.monotonic()
            refused = await second_client.get("/_matrix/client/versions")
            assert time.monotonic() - started < 1.0  # not queued behind the first
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["errcode"] == "M_LIMIT_EXCEEDED"
            release.set()
            assert (await first).status_code == 200
            assert relay.app.limiter.in_flight(relay.route.tenant_id) == 0
            assert (await second_client.get("/_matrix/client/versions")).status_code == 200
    finally:
        homeserver.close()
    assert len(heads) == 2  # the refused request never reached the homeserver
    assert relayed(relay.app) == 2


def _upstream_is(app: ProxyApp, port: int) -> Callable[[], bool]:
    return lambda: _route(app).upstream.endswith(f":{port}")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /_matrix/client/versions HTTP/1.1\nHost: acme.c3.test\n\n",
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: acme.c3.test\r\nHost: b\r\n\r\n",
        b"PUT /_matrix/client/v3/x HTTP/1.1\r\nHost: acme.c3.test\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["bare-lf", "two-hosts", "cl-te"],
)
async def test_what_the_lane_does_not_take_is_refused_as_before(
    relay: Relay, request_bytes: bytes
) -> None:
    answer = await relay.raw(request_bytes, read_until_close=True)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"M_UNRECOGNIZED" in answer or b"M_UNKNOWN" in answer
    assert relayed(relay.app) == 0 and not relay.stand_in.seen


async def test_a_target_with_a_fragment_is_left_to_the_app(relay: Relay) -> None:
    """The lane's request line leaves out "#": such a request is the app's, answered as before
    (its fragment not passed on), and the connection comes back to the lane."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        for target in (b"/_matrix/client/versions#top", b"/_matrix/client/versions"):
            writer.write(b"GET %s HTTP/1.1\r\nHost: acme.c3.test\r\n\r\n" % target)
            answer = await asyncio.wait_for(read_answer(reader), timeout=10)
            assert answer.startswith(b"HTTP/1.1 200 ") and b"v1.11" in answer
    finally:
        writer.close()
    assert relayed(relay.app) == 1  # the second
    assert [seen["path"] for seen in relay.stand_in.seen] == ["/_matrix/client/versions"] * 2


async def test_a_slow_head_times_out_in_the_lane_too(relay: Relay) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        writer.write(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: acme.c3.test\r\n\r\n")
        first = await asyncio.wait_for(read_answer(reader), timeout=5)
        writer.write(b"GET /_matrix/client/versions HTTP/1.1\r\n")  # never finished
        rest = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    assert first.startswith(b"HTTP/1.1 200 ")
    assert rest.startswith(b"HTTP/1.1 408 ")


async def test_the_access_log_names_the_request_and_its_tenant(
    relay: Relay,
) -> None:
    from platform_core.logging import request_id_var, tenant_id_var

    seen: list[tuple[str | None, str | None, str]] = []

    class Remember(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((request_id_var.get(), tenant_id_var.get(), record.getMessage()))

    relay.app.settings = relay.app.settings.model_copy(update={"proxy_access_log": True})
    handler = Remember()
    access = logging.getLogger("homeserver_proxy.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
            await client.get(
                "/_matrix/client/versions?access_token=secret",
                headers={"X-Request-Id": "req-access-42"},
            )
    finally:
        access.removeHandler(handler)
    assert relayed(relay.app) == 1
    [(request_id, tenant_id, message)] = seen
    assert (request_id, tenant_id) == ("req-access-42", relay.route.tenant_id)
    assert message.startswith("GET /_matrix/client/versions 200 ") and "secret" not in message


async def test_the_lane_can_be_turned_off(platform_env: dict[str, str], relay: Relay) -> None:
    relay.app.settings = relay.app.settings.model_copy(update={"proxy_relay": False})
    async with httpx.AsyncClient(base_url=relay.url, headers=HOST) as client:
        answer = await client.get("/_matrix/client/versions")
    assert answer.status_code == 200 and relayed(relay.app) == 0


_PATH_BITS = list("aZ0.-_~%24eEc;\\!$:")
_ID_PLACES = [  # what may come before a last segment
    "rooms/{room}/send/{type}",
    "rooms/{room}/receipt/{type}",
    "rooms/{room}/state/{type}",
    "rooms/{room}/state",
    "rooms/{room}",
    "rooms/{room}/redact/$e",
    "rooms/{room}/typing",
    "sendToDevice/{type}",
    "{room}/send/{type}",
    "{room}/receipt",
    "",
]


@settings(max_examples=4000, deadline=None)
@given(
    first_method=st.sampled_from(["PUT", "POST"]),
    method=st.sampled_from(["PUT", "POST", "GET"]),
    prefix=st.sampled_from(["", "/t/acme", "/t/ACME", "/t/acme/"]),
    version=st.sampled_from(["v3", "r0", "unstable", "%76%33", "..", "v3/.."]),
    place=st.sampled_from(_ID_PLACES),
    room=st.sampled_from(["!r:acme.c3.test", "%21r%3Aacme.c3.test", "%2521r", "%2e%2e", "", "."])
    | st.text(alphabet=_PATH_BITS, max_size=6),
    event_type=st.sampled_from(["m.room.message", "m.call.invite", "m%2Ecall%2Einvite", "m.x/y"])
    | st.sampled_from(["m.call.member", "org.matrix.msc3401.call.member", "m.read"])
    | st.text(alphabet=_PATH_BITS, max_size=6),
    first=st.sampled_from(["txn1", "sync", "events", "m.call.member", "%24ev1", "$ev1", "login"])
    | st.text(alphabet=_PATH_BITS, max_size=5),
    then=st.sampled_from(["txn2", "sync", "events", "m.call.member", ".", "..", "%2e%2e", ""])
    | st.sampled_from(["login", "register", "versions", "user_directory"])
    | st.sampled_from(["%24ev2", "$ev2", "%24", "$", "%2424x", "%24.x", "%24%24x", "%2Fx"])
    | st.text(alphabet=[*_PATH_BITS, "/"], max_size=5),
)
def test_a_plan_copied_from_the_rooms_last_is_the_plan_made_in_full(
    first_method: str,
    method: str,
    prefix: str,
    version: str,
    place: str,
    room: str,
    event_type: str,
    first: str,
    then: str,
) -> None:
    """A send's, a receipt's or a to-device message's plan copied from the room's (or type's)
    first one, with another txn or event id, forwards, bills, times and counts exactly as a
    plan made from its whole path would; so does every other request's, whatever came before
    it."""
    place = place.format(room=room, type=event_type)
    head = f"{prefix}/_matrix/client/{version}/" + (f"{place}/" if place else "")
    copied, made_in_full = _plan_after(first_method, head + first, method, head + then)
    assert copied == made_in_full


def _plan_after(
    first_method: str, first: str, method: str, path: str
) -> tuple[dict[str, object] | None, dict[str, object] | None]:
    """The plan of ``path`` just after ``first`` was planned (from empty tables), and the plan
    of ``path`` made in full, each as its fields."""
    relay_module._plans.clear()
    relay_module._by_room.clear()
    relay_module._plan_of(first_method, first.encode())
    return (
        _fields(relay_module._plan_of(method, path.encode())),
        _fields(relay_module._make_plan(method, path.encode())),
    )


def _fields(plan: relay_module._Plan | None) -> dict[str, object] | None:
    return None if plan is None else {n: getattr(plan, n) for n in relay_module._Plan.__slots__}


def test_every_send_receipt_and_to_device_plan_copied_from_another_is_the_plan_made_in_full() -> (
    None
):
    """The cases the random test above meets rarely, each one: ids sent as %24 or $ after one
    sent either way, under either method."""
    heads = [
        f"{prefix}/_matrix/client/v3/{place}/"
        for prefix in ("", "/t/acme")
        for place in (
            "rooms/%21r%3Aacme.c3.test/send/m.room.message",
            "rooms/%21r%3Aacme.c3.test/receipt/m.read",
            "sendToDevice/m.room.encrypted",
            "sendToDevice/m.room_key_request",
        )
    ]
    for head, first_method, method, first, then in itertools.product(
        heads,
        ("PUT", "POST"),
        ("PUT", "POST"),
        ("txn1", "%24ev1", "$ev1", "%2424x1"),
        ("txn2", "%24ev2", "$ev2", "%2424x2", "%24"),
    ):
        copied, made_in_full = _plan_after(first_method, head + first, method, head + then)
        assert copied == made_in_full, (head, first_method, method, first, then)
