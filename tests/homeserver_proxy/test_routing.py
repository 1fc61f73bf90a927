"""Tenant resolution: host normalisation, /t/<slug> prefix, and the Redis-backed route table."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import redis
import redis.asyncio as aioredis

from homeserver_proxy.routing import RouteTable, normalize_host, split_slug_prefix, valid_host
from platform_core.redis import RedisKeys
from platform_core.routes import Route, publish_route, withdraw_route


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("acme.c3.test", "acme.c3.test"),
        ("ACME.C3.Test", "acme.c3.test"),
        ("acme.c3.test:8080", "acme.c3.test"),
        ("acme.c3.test.", "acme.c3.test"),
        ("acme.c3.test.:443", "acme.c3.test"),
        ("[::1]:8080", "[::1]"),
    ],
)
def test_hosts_are_normalised(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    ("raw", "valid"),
    [
        (b"acme.c3.test", True),
        (b"ACME.c3.test.:8080", True),
        (b"[::1]:8080", True),
        (b"127.0.0.1:8080", True),
        (b"c3_proxy:8080", True),
        (b"", False),
        (b"acme.c3.test:8080@evil.test", False),  # would have routed to acme
        (b"acme.c3.test:8080.evil.test", False),
        (b"evil.test/acme.c3.test", False),
        (b"acme.c3.test:123456", False),
        (b"acme c3", False),
    ],
)
def test_host_headers_must_be_a_host_and_an_optional_port(raw: bytes, valid: bool) -> None:
    assert valid_host(raw) is valid


def test_slug_prefix_is_split_from_the_homeserver_path() -> None:
    assert split_slug_prefix("/t/acme/_matrix/client/versions") == (
        "acme",
        "/_matrix/client/versions",
    )
    assert split_slug_prefix("/t/ACME/_matrix/x") == ("acme", "/_matrix/x")
    assert split_slug_prefix("/t/acme") == ("acme", "/")
    assert split_slug_prefix("/t//_matrix") is None
    assert split_slug_prefix("/_matrix/client/versions") is None


def _route(slug: str) -> Route:
    return Route(
        tenant_id=str(uuid.uuid4()),
        slug=slug,
        server_name=f"{slug}.c3.test",
        upstream="http://127.0.0.1:1",
        status="active",
        max_upload_bytes=1024,
    )


async def _until(check, within: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_route_table_follows_publish_and_withdraw(platform_env: dict[str, str]) -> None:
    keys = RedisKeys(f"{platform_env['C3_REDIS_NAMESPACE']}-routes-{uuid.uuid4().hex[:6]}")
    sync_client = redis.Redis.from_url(platform_env["C3_REDIS_URL"])
    client = aioredis.from_url(platform_env["C3_REDIS_URL"])
    table = RouteTable(client, keys, refresh_interval=30)
    await table.start()
    try:
        route = _route("acme")
        publish_route(sync_client, keys, route)
        assert await table.by_host("acme.c3.test") == route  # a miss asks Redis directly
        assert await table.by_slug("acme") == route

        withdraw_route(sync_client, keys, server_name=route.server_name, slug=route.slug)

        async def gone() -> bool:
            return table.get_cached("host:acme.c3.test") is None

        await _until(gone)  # the pub/sub notification reloaded the table
        assert await table.by_slug("acme") is None
    finally:
        await table.stop()
        await client.aclose()
        sync_client.delete(keys.routes)
        sync_client.close()


async def test_unknown_hosts_do_not_hit_redis_on_every_request(
    platform_env: dict[str, str],
) -> None:
    keys = RedisKeys(f"{platform_env['C3_REDIS_NAMESPACE']}-miss-{uuid.uuid4().hex[:6]}")
    client = aioredis.from_url(platform_env["C3_REDIS_URL"])
    table = RouteTable(client, keys)
    try:
        assert await table.by_host("nobody.c3.test") is None
        await client.aclose()  # Redis is gone now: the cached miss must still answer
        assert await table.by_host("nobody.c3.test") is None
    finally:
        await client.aclose()


class _CountedLoads:
    """Counts the table's whole loads (HGETALL) while letting them happen."""

    def __init__(self, table: RouteTable) -> None:
        self.count = 0
        self._load = table.load
        table.load = self  # type: ignore[method-assign]

    async def __call__(self) -> None:
        self.count += 1
        await self._load()


@asynccontextmanager
async def _watched_table(  # type: ignore[no-untyped-def]
    platform_env: dict[str, str], routes: list[Route], *, client_name: str | None = None
):
    """A started table over ``routes`` (published first), its whole loads counted; stopped,
    its routes deleted and its clients closed on the way out. ``client_name`` names the
    table's Redis connections (to find and cut them)."""
    keys = RedisKeys(f"{platform_env['C3_REDIS_NAMESPACE']}-incr-{uuid.uuid4().hex[:6]}")
    sync_client = redis.Redis.from_url(platform_env["C3_REDIS_URL"])
    for route in routes:
        publish_route(sync_client, keys, route)
    client = aioredis.from_url(platform_env["C3_REDIS_URL"], client_name=client_name)
    table = RouteTable(client, keys, refresh_interval=60)  # no safety-net reload in the test
    loads = _CountedLoads(table)
    await table.start()
    try:
        # Subscribed (the watcher loads once more on subscribing): changes from now on arrive.
        await _until(lambda: _true(loads.count == 2))
        yield keys, sync_client, client, table, loads
    finally:
        await table.stop()
        await client.aclose()
        sync_client.delete(keys.routes)
        sync_client.close()


async def _true(value: bool) -> bool:
    return value


async def test_a_route_change_updates_just_that_route_without_reloading_the_table(
    platform_env: dict[str, str],
) -> None:
    tenants = [_route(f"t{i}-{uuid.uuid4().hex[:6]}") for i in range(300)]
    async with _watched_table(platform_env, tenants) as (keys, sync_client, client, table, loads):
        # Loaded whole at start (in several HSCAN pieces: 600 fields).
        assert all(table.get_cached(f"host:{t.server_name}") == t for t in tenants)
        assert all(table.get_cached(f"slug:{t.slug}") == t for t in tenants)
        # A homeserver falls asleep; a new tenant appears; another tenant is withdrawn.
        sleeping = replace(tenants[7], asleep=True)
        publish_route(sync_client, keys, sleeping)
        newcomer = _route(f"new-{uuid.uuid4().hex[:6]}")
        publish_route(sync_client, keys, newcomer)
        gone = tenants[8]
        withdraw_route(sync_client, keys, server_name=gone.server_name, slug=gone.slug)

        async def applied() -> bool:
            return (
                table.get_cached(f"host:{sleeping.server_name}") == sleeping
                and table.get_cached(f"slug:{sleeping.slug}") == sleeping
                and table.get_cached(f"slug:{newcomer.slug}") == newcomer
                and table.get_cached(f"host:{gone.server_name}") is None
                and table.get_cached(f"slug:{gone.slug}") is None
            )

        await _until(applied)
        assert loads.count == 2  # no whole reload for any of the three changes
        # A burst of changes (every homeserver wakes at once) lands in full, still incrementally.
        woken = [replace(t, upstream="http://127.0.0.1:2") for t in tenants[10:110]]
        for route in woken:
            publish_route(sync_client, keys, route)

        async def all_woken() -> bool:
            return all(table.get_cached(f"host:{r.server_name}") == r for r in woken)

        await _until(all_woken)
        assert loads.count == 2
        # Everything else is still served, from memory.
        assert table.get_cached(f"host:{tenants[0].server_name}") == tenants[0]
        assert table.get_cached(f"slug:{tenants[299].slug}") == tenants[299]


async def test_a_change_message_from_an_older_publisher_reloads_the_whole_table(
    platform_env: dict[str, str],
) -> None:
    tenants = [_route(f"o{i}-{uuid.uuid4().hex[:6]}") for i in range(20)]
    async with _watched_table(platform_env, tenants) as (keys, sync_client, client, table, loads):
        # An older provisioner writes the hash and announces "*": no fields named.
        changed = replace(tenants[3], status="suspended")
        sync_client.hset(keys.routes, f"host:{changed.server_name}", changed.to_json())
        sync_client.hdel(keys.routes, f"slug:{tenants[4].slug}")
        sync_client.publish(keys.routes_changed, "*")

        async def reloaded() -> bool:
            return (
                table.get_cached(f"host:{changed.server_name}") == changed
                and table.get_cached(f"slug:{tenants[4].slug}") is None
            )

        await _until(reloaded)
        assert loads.count == 3
        # Anything else unparsable is treated the same way, never as "nothing changed".
        sync_client.hdel(keys.routes, f"slug:{tenants[5].slug}")
        sync_client.publish(keys.routes_changed, b'{"fields": ["slug:x"]}')

        async def reloaded_again() -> bool:
            return table.get_cached(f"slug:{tenants[5].slug}") is None

        await _until(reloaded_again)
        assert loads.count == 4


async def test_a_tenant_cached_as_unknown_is_served_once_its_route_is_published(
    platform_env: dict[str, str],
) -> None:
    async with _watched_table(platform_env, []) as (keys, sync_client, client, table, loads):
        late = _route(f"late-{uuid.uuid4().hex[:6]}")
        assert await table.by_host(late.server_name) is None  # remembered as a miss for 1 s
        publish_route(sync_client, keys, late)

        async def served() -> bool:
            return await table.by_host(late.server_name) == late

        await _until(served, within=0.9)  # sooner than the cached miss would expire
        assert loads.count == 2


async def test_a_lost_subscription_reloads_the_whole_table_once_back(
    platform_env: dict[str, str],
) -> None:
    name = f"c3-test-routes-{uuid.uuid4().hex[:8]}"  # only our own connections are cut
    tenant = _route(f"lost-{uuid.uuid4().hex[:6]}")
    async with _watched_table(platform_env, [tenant], client_name=name) as (
        keys,
        sync_client,
        _,
        table,
        loads,
    ):

        async def subscribed() -> list[str]:
            return [
                c["id"]
                for c in sync_client.client_list()
                if c.get("name") == name and int(c.get("sub", 0)) > 0
            ]

        ids = await _until(subscribed)
        # Changed with no notification (as if sent while the proxy was cut off), then cut off.
        changed = replace(tenant, asleep=True)
        sync_client.hset(keys.routes, f"host:{tenant.server_name}", changed.to_json())
        sync_client.client_kill_filter(_id=ids[0])

        async def reloaded() -> bool:
            return table.get_cached(f"host:{tenant.server_name}") == changed

        await _until(reloaded)
        assert loads.count >= 3
