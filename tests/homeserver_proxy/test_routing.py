"""Tenant resolution: host normalisation, /t/<slug> prefix, and the Redis-backed route table."""

from __future__ import annotations

import asyncio
import time
import uuid

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
