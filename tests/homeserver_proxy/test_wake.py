"""The proxy's side of sleeping homeservers (homeserver_proxy.wake) against real Redis and a real
HTTP upstream: held requests ask for one wake and go on with the awake route; a wake that does
not come answers 503 with Retry-After, never a hang; last-seen times reach Redis in one write.
The worker's side is played by publishing the route as the wake task would (the real task runs
in tests/test_sleep_end_to_end.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web

from c3.local_run import free_port
from homeserver_proxy import errors, wake
from homeserver_proxy.app import ProxyApp
from homeserver_proxy.asgi import Message, Receive
from homeserver_proxy.forwarding import ClientGone
from homeserver_proxy.wake import Waker
from platform_core.redis import RedisKeys, keys_for
from platform_core.routes import Route, publish_route
from platform_core.settings import get_settings
from tests.helpers.platform import poll_async
from tests.helpers.stand_in import serving


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A homeserver stand-in answering /health."""
    app = web.Application()
    app.router.add_get("/health", lambda _: web.Response(text="OK"))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _asleep_route(upstream: str) -> Route:
    slug = f"w{uuid.uuid4().hex[:8]}"
    return Route(
        tenant_id=str(uuid.uuid4()),
        slug=slug,
        server_name=f"{slug}.c3.test",
        upstream=upstream,
        status="active",
        max_upload_bytes=1024,
        asleep=True,
    )


def _staying(body: bytes = b"") -> Receive:
    """The ``receive`` of a client that sent its request (``body``) and stays."""
    messages: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        return await asyncio.get_running_loop().create_future()  # never: the client stays

    return receive


@dataclasses.dataclass
class _Redis:
    """This test's own Redis namespace, with the sync client the worker's side publishes routes
    through and the asyncio client the proxy's ``Waker`` reads."""

    keys: RedisKeys
    sync_client: redis.Redis
    client: aioredis.Redis


@pytest.fixture
async def rds(platform_env: dict[str, str]) -> AsyncIterator[_Redis]:
    keys = RedisKeys(f"{platform_env['C3_REDIS_NAMESPACE']}-wake-{uuid.uuid4().hex[:6]}")
    sync_client = redis.Redis.from_url(platform_env["C3_REDIS_URL"])
    client = aioredis.from_url(platform_env["C3_REDIS_URL"])
    try:
        yield _Redis(keys, sync_client, client)
    finally:
        sync_client.close()
        await client.aclose()


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The wake tasks the proxy asked for (no worker runs them)."""
    sent: list[tuple[str, ...]] = []
    monkeypatch.setattr(wake, "send_task", lambda *args: sent.append(args))
    return sent


async def _until_wake_asked(asked: list[tuple[str, ...]]) -> None:
    async def asked_once() -> bool:
        return bool(asked)

    await poll_async(asked_once, timeout=10, what="the wake to be asked for")


async def test_fifty_held_requests_ask_for_one_wake_and_go_on_when_it_is_awake(
    rds: _Redis, upstream: str, session: aiohttp.ClientSession, asked: list[tuple[str, ...]]
) -> None:
    route = _asleep_route(upstream)
    publish_route(rds.sync_client, rds.keys, route)
    waker = Waker(rds.client, rds.keys, lambda: session, timeout_s=10, flush_interval_s=1)
    held = [asyncio.create_task(waker.ready(route, _staying())) for _ in range(50)]

    await _until_wake_asked(asked)
    assert not any(task.done() for task in held)  # held while it sleeps
    # A second proxy replica's waiter finds the wake already asked for.
    other = Waker(rds.client, rds.keys, lambda: session, timeout_s=10, flush_interval_s=1)
    held.append(asyncio.create_task(other.ready(route, _staying())))
    # The worker woke it: the route says awake.
    publish_route(rds.sync_client, rds.keys, dataclasses.replace(route, asleep=False))
    results = await asyncio.wait_for(asyncio.gather(*held), 10)
    assert all(woken.asleep is False for woken, _ in results)
    assert asked == [(wake.TaskNames.WAKE_HOMESERVER, route.tenant_id)]


async def test_a_wake_that_does_not_come_answers_503_with_retry_after(
    rds: _Redis, upstream: str, session: aiohttp.ClientSession, asked: list[tuple[str, ...]]
) -> None:
    route = _asleep_route(upstream)  # asked for, but no worker wakes it
    publish_route(rds.sync_client, rds.keys, route)
    waker = Waker(rds.client, rds.keys, lambda: session, timeout_s=0.5, flush_interval_s=1)
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(waker.ready(route, _staying()) for _ in range(10)), return_exceptions=True
    )
    assert time.monotonic() - started < 5
    for outcome in outcomes:
        assert isinstance(outcome, errors.MatrixError)
        assert outcome.status == 503 and outcome.errcode == "M_UNKNOWN"
        assert dict(outcome.headers)[b"retry-after"] == b"2"


async def test_a_refused_upstream_asks_for_a_restart_and_holds_the_next_requests(
    rds: _Redis, upstream: str, session: aiohttp.ClientSession, asked: list[tuple[str, ...]]
) -> None:
    route = dataclasses.replace(_asleep_route(upstream), asleep=False)
    publish_route(rds.sync_client, rds.keys, route)
    waker = Waker(rds.client, rds.keys, lambda: session, timeout_s=10, flush_interval_s=1)
    answer = waker.after_failure(route, errors.upstream_refused())
    assert answer.status == 503 and dict(answer.headers)[b"retry-after"] == b"1"
    other = errors.upstream_timeout()
    assert waker.after_failure(route, other) is other  # only a refusal heals
    # The upstream answers /health (restarted): the next request goes on.
    assert (await asyncio.wait_for(waker.ready(route, _staying()), 10))[0] == route
    assert asked == [(wake.TaskNames.WAKE_HOMESERVER, route.tenant_id)]


async def test_last_seen_times_reach_redis_in_one_write_per_flush(
    rds: _Redis, upstream: str, session: aiohttp.ClientSession
) -> None:
    route = dataclasses.replace(_asleep_route(upstream), asleep=False)
    waker = Waker(rds.client, rds.keys, lambda: session, timeout_s=10, flush_interval_s=1)
    before = time.time()
    for _ in range(100):
        receive = _staying()
        tasks = len(asyncio.all_tasks())
        assert await waker.ready(route, receive) == (route, receive)  # awake: straight through
        assert len(asyncio.all_tasks()) == tasks  # and nothing started to watch the client
    await waker.flush()
    seen = await rds.client.hget(rds.keys.homeserver_last_seen, route.tenant_id)
    assert seen is not None and before <= float(seen) <= time.time()


def _leaving(hang_up: asyncio.Event) -> Receive:
    """The ``receive`` of a client that sent its request and disconnects on ``hang_up``."""
    messages: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await hang_up.wait()
        return {"type": "http.disconnect"}

    return receive


async def test_a_held_client_that_leaves_stops_holding_and_the_others_go_on_with_their_bodies(
    rds: _Redis, upstream: str, session: aiohttp.ClientSession, asked: list[tuple[str, ...]]
) -> None:
    route = _asleep_route(upstream)
    publish_route(rds.sync_client, rds.keys, route)
    waker = Waker(rds.client, rds.keys, lambda: session, timeout_s=30, flush_interval_s=1)
    hang_up = asyncio.Event()
    leaving = asyncio.create_task(waker.ready(route, _leaving(hang_up)))
    staying = asyncio.create_task(waker.ready(route, _staying(b'{"body": "kept"}')))

    await _until_wake_asked(asked)
    hung_up_at = time.monotonic()
    hang_up.set()
    with pytest.raises(ClientGone):
        await asyncio.wait_for(leaving, 5)
    assert time.monotonic() - hung_up_at < 1.0  # not at the wake timeout (30 s)
    assert not staying.done()  # the wake goes on for the client still there

    publish_route(rds.sync_client, rds.keys, dataclasses.replace(route, asleep=False))
    woken, receive = await asyncio.wait_for(staying, 10)
    assert woken.asleep is False
    # What the watcher read while holding reaches the forwarder.
    assert await receive() == {
        "type": "http.request",
        "body": b'{"body": "kept"}',
        "more_body": False,
    }
    assert len(asked) == 1


async def test_a_client_leaving_a_held_request_frees_its_slot_and_nothing_goes_upstream(
    platform_env: dict[str, str], asked: list[tuple[str, ...]]
) -> None:
    """Through the proxy app: the held request's limiter slot is given back when its client
    leaves, and once the homeserver is awake only the requests of clients still there reach it."""
    reached: list[str] = []

    async def homeserver(request: web.Request) -> web.Response:
        if request.path != "/health":
            reached.append(request.path)
        return web.json_response({"versions": ["v1.11"]})

    settings = get_settings().model_copy(
        update={
            "redis_namespace": f"{get_settings().redis_namespace}-held-{uuid.uuid4().hex[:6]}",
            "wake_timeout_s": 30.0,
        }
    )
    keys = keys_for(settings)
    sync_client = redis.Redis.from_url(settings.require_redis_url())
    app = ProxyApp(settings, metering=False)
    await app.forwarder.start()  # no route watcher: lookups ask Redis
    try:
        async with serving(homeserver) as url:
            route = _asleep_route(url)
            publish_route(sync_client, keys, route)
            sent: list[Message] = []

            async def send(message: Message) -> None:
                sent.append(message)

            def scope(path: str) -> dict:
                return {
                    "type": "http",
                    "method": "GET",
                    "scheme": "http",
                    "path": path,
                    "raw_path": path.encode(),
                    "query_string": b"",
                    "headers": [(b"host", route.server_name.encode())],
                    "client": ("192.0.2.7", 50000),
                }

            hang_up = asyncio.Event()
            held = asyncio.create_task(
                app(scope("/_matrix/client/versions"), _leaving(hang_up), send)
            )

            async def holding() -> bool:
                return (
                    bool(asked) and app.limiter.client_in_flight(route.tenant_id, "192.0.2.7") == 1
                )

            await poll_async(holding, timeout=10, what="the request to be held")
            hang_up.set()
            await asyncio.wait_for(held, 5)  # let go at once, not at the wake timeout
            assert sent == []  # nobody to answer
            assert app.limiter.client_in_flight(route.tenant_id, "192.0.2.7") == 0

            # The homeserver wakes; a client that stays is answered. By then the one that left
            # would have been forwarded too, had it been still held.
            publish_route(sync_client, keys, dataclasses.replace(route, asleep=False))
            await asyncio.wait_for(app(scope("/_matrix/client/v3/login"), _staying(), send), 10)
            assert sent[0]["status"] == 200
            assert reached == ["/_matrix/client/v3/login"]
    finally:
        await app.forwarder.stop()
        await app.redis.aclose()
        sync_client.delete(keys.routes)
        sync_client.close()
