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
from homeserver_proxy.wake import Waker
from platform_core.redis import RedisKeys
from platform_core.routes import Route, publish_route
from tests.helpers.platform import poll_async


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


def _keys(platform_env: dict[str, str]) -> RedisKeys:
    return RedisKeys(f"{platform_env['C3_REDIS_NAMESPACE']}-wake-{uuid.uuid4().hex[:6]}")


async def test_fifty_held_requests_ask_for_one_wake_and_go_on_when_it_is_awake(
    platform_env: dict[str, str],
    upstream: str,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = _keys(platform_env)
    sync_client = redis.Redis.from_url(platform_env["C3_REDIS_URL"])
    client = aioredis.from_url(platform_env["C3_REDIS_URL"])
    asked: list[tuple[str, ...]] = []
    monkeypatch.setattr(wake, "send_task", lambda *args: asked.append(args))
    route = _asleep_route(upstream)
    publish_route(sync_client, keys, route)
    waker = Waker(client, keys, lambda: session, timeout_s=10, flush_interval_s=1)
    try:
        held = [asyncio.create_task(waker.ready(route)) for _ in range(50)]

        async def asked_once() -> bool:
            return bool(asked)

        await poll_async(asked_once, timeout=10, what="the wake to be asked for")
        assert not any(task.done() for task in held)  # held while it sleeps
        # A second proxy replica's waiter finds the wake already asked for.
        other = Waker(client, keys, lambda: session, timeout_s=10, flush_interval_s=1)
        held.append(asyncio.create_task(other.ready(route)))
        # The worker woke it: the route says awake.
        publish_route(sync_client, keys, dataclasses.replace(route, asleep=False))
        results = await asyncio.wait_for(asyncio.gather(*held), 10)
        assert all(r.asleep is False for r in results)
        assert asked == [(wake.TaskNames.WAKE_HOMESERVER, route.tenant_id)]
    finally:
        sync_client.close()
        await client.aclose()


async def test_a_wake_that_does_not_come_answers_503_with_retry_after(
    platform_env: dict[str, str],
    upstream: str,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = _keys(platform_env)
    sync_client = redis.Redis.from_url(platform_env["C3_REDIS_URL"])
    client = aioredis.from_url(platform_env["C3_REDIS_URL"])
    monkeypatch.setattr(wake, "send_task", lambda *args: None)  # no worker
    route = _asleep_route(upstream)
    publish_route(sync_client, keys, route)
    waker = Waker(client, keys, lambda: session, timeout_s=0.5, flush_interval_s=1)
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(waker.ready(route) for _ in range(10)), return_exceptions=True
        )
        assert time.monotonic() - started < 5
        for outcome in outcomes:
            assert isinstance(outcome, errors.MatrixError)
            assert outcome.status == 503 and outcome.errcode == "M_UNKNOWN"
            assert dict(outcome.headers)[b"retry-after"] == b"2"
    finally:
        sync_client.close()
        await client.aclose()


async def test_a_refused_upstream_asks_for_a_restart_and_holds_the_next_requests(
    platform_env: dict[str, str],
    upstream: str,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = _keys(platform_env)
    sync_client = redis.Redis.from_url(platform_env["C3_REDIS_URL"])
    client = aioredis.from_url(platform_env["C3_REDIS_URL"])
    asked: list[tuple[str, ...]] = []
    monkeypatch.setattr(wake, "send_task", lambda *args: asked.append(args))
    route = dataclasses.replace(_asleep_route(upstream), asleep=False)
    publish_route(sync_client, keys, route)
    waker = Waker(client, keys, lambda: session, timeout_s=10, flush_interval_s=1)
    try:
        answer = waker.after_failure(route, errors.upstream_refused())
        assert answer.status == 503 and dict(answer.headers)[b"retry-after"] == b"1"
        other = errors.upstream_timeout()
        assert waker.after_failure(route, other) is other  # only a refusal heals
        # The upstream answers /health (restarted): the next request goes on.
        assert (await asyncio.wait_for(waker.ready(route), 10)) == route
        assert asked == [(wake.TaskNames.WAKE_HOMESERVER, route.tenant_id)]
    finally:
        sync_client.close()
        await client.aclose()


async def test_last_seen_times_reach_redis_in_one_write_per_flush(
    platform_env: dict[str, str], upstream: str, session: aiohttp.ClientSession
) -> None:
    keys = _keys(platform_env)
    client = aioredis.from_url(platform_env["C3_REDIS_URL"])
    route = dataclasses.replace(_asleep_route(upstream), asleep=False)
    waker = Waker(client, keys, lambda: session, timeout_s=10, flush_interval_s=1)
    try:
        before = time.time()
        for _ in range(100):
            assert await waker.ready(route) is route  # awake: straight through
        await waker.flush()
        seen = await client.hget(keys.homeserver_last_seen, route.tenant_id)
        assert seen is not None and before <= float(seen) <= time.time()
    finally:
        await client.aclose()
