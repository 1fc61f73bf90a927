"""Tenant resolution: Host header or ``/t/{slug}`` prefix -> Route, from an in-memory table.

The table is loaded from Redis at start, reloaded on every route-change notification (pub/sub)
and every ``refresh_interval`` seconds as a safety net. A miss asks Redis once (a tenant that
was just published may not have reached us yet); Redis being down keeps the last table serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

import redis.asyncio as aioredis

from platform_core.redis import RedisKeys
from platform_core.routes import Route, host_field, read_route, read_routes, slug_field

log = logging.getLogger(__name__)

_MISS_TTL_S = 1.0
# RFC 9110 Host: a reg-name or an IP literal, then an optional decimal port. (Underscores are
# not DNS but appear in container host names.) Anything else is refused, not guessed at:
# "acme.c3.test:80@evil.test" would otherwise route to acme.
_VALID_HOST = re.compile(rb"(?:\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::[0-9]{1,5})?", re.IGNORECASE)


def valid_host(raw: bytes) -> bool:
    return _VALID_HOST.fullmatch(raw) is not None


def normalize_host(raw: str) -> str:
    """``Acme.C3.localhost.:8080`` -> ``acme.c3.localhost``; IPv6 literals keep their brackets."""
    host = raw.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    host = host.rsplit(":", 1)[0] if ":" in host else host
    return host.rstrip(".")


def split_slug_prefix(raw_path: str) -> tuple[str, str] | None:
    """``/t/acme/_matrix/client/versions`` -> (``acme``, ``/_matrix/client/versions``)."""
    if not raw_path.startswith("/t/"):
        return None
    rest = raw_path[3:]
    slug, sep, remainder = rest.partition("/")
    if not slug:
        return None
    return slug.lower(), "/" + remainder if sep else "/"


class RouteTable:
    def __init__(
        self, redis: aioredis.Redis, keys: RedisKeys, *, refresh_interval: float = 10.0
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._routes: dict[str, Route] = {}
        self._misses: dict[str, float] = {}
        self._refresh_interval = refresh_interval
        self._watcher: asyncio.Task[None] | None = None

    # Lookup (hot path) -----------------------------------------------------------------

    def get_cached(self, field: str) -> Route | None:
        return self._routes.get(field)

    async def by_host(self, host: str) -> Route | None:
        return await self._lookup(host_field(host))

    async def by_slug(self, slug: str) -> Route | None:
        return await self._lookup(slug_field(slug))

    async def _lookup(self, field: str) -> Route | None:
        route = self._routes.get(field)
        if route is not None:
            return route
        missed_at = self._misses.get(field)
        now = time.monotonic()
        if missed_at is not None and now - missed_at < _MISS_TTL_S:
            return None
        try:
            route = await read_route(self._redis, self._keys, field)
        except aioredis.RedisError:
            log.warning("route lookup failed: Redis unavailable")
            return None
        if route is None:
            if len(self._misses) > 10_000:
                self._misses.clear()
            self._misses[field] = now
            return None
        self._routes[field] = route
        return route

    # Loading ---------------------------------------------------------------------------

    async def load(self) -> None:
        self._routes = await read_routes(self._redis, self._keys)
        self._misses.clear()

    async def start(self) -> None:
        try:
            await self.load()
        except aioredis.RedisError:
            log.warning("route table not loaded at start: Redis unavailable; will retry")
        self._watcher = asyncio.create_task(self._watch(), name="route-table-watch")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def _watch(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._keys.routes_changed)
                    await self.load()  # anything changed while we were not subscribed
                    backoff = 0.5
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self._refresh_interval
                        )
                        # A change notification or a quiet interval: reload either way.
                        if message is not None:
                            # Coalesce a burst of notifications into one reload.
                            while await pubsub.get_message(
                                ignore_subscribe_messages=True, timeout=0.0
                            ):
                                pass
                        await self.load()
            except asyncio.CancelledError:
                raise
            except (aioredis.RedisError, OSError) as exc:
                log.warning(
                    "route watch lost Redis (%s); retrying in %.1fs", type(exc).__name__, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
