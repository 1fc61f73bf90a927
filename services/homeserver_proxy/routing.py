"""Tenant resolution: Host header or ``/t/{slug}`` prefix -> Route, from an in-memory table.

The table is loaded whole from Redis at start and on every (re)subscription to the route-change
channel. A change notification names the fields that changed (``platform_core.routes``): only
those are read (one HMGET) and updated or removed, so a homeserver going to sleep or waking costs
the same at 10 tenants as at 10,000. A burst of notifications is coalesced into one read of all
the fields it names. A notification that names no fields (an older publisher) reloads the whole
table, and so does the safety net every ``refresh_interval`` seconds since the last whole load,
however busy the channel (a lost notification is healed within one interval). A miss asks Redis
once (a tenant that was just published may not have reached us yet); Redis being down keeps the
last table serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from platform_core.redis import RedisKeys
from platform_core.routes import (
    Route,
    changed_fields,
    host_field,
    read_fields,
    read_route,
    read_routes,
    slug_field,
)

log = logging.getLogger(__name__)

_MISS_TTL_S = 1.0
# A burst naming more fields than this (a mass wake, a restore) is read by a whole load instead:
# one HMGET answer is parsed in one piece, a whole load's scan in pieces between requests.
_MAX_CHANGED_FIELDS = 2_000
# Notifications coalesced into one update at most: a channel that never goes quiet still gets
# its updates applied.
_MAX_BURST = 500
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
        self._loaded_at = time.monotonic()  # of the last whole load
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
        """Read the whole table (HSCAN in pieces): O(routes)."""
        self._routes = await read_routes(self._redis, self._keys)
        self._misses.clear()
        self._loaded_at = time.monotonic()

    async def update(self, fields: set[str]) -> None:
        """Read just ``fields`` (one HMGET) and update or remove their entries: O(fields)."""
        found = await read_fields(self._redis, self._keys, sorted(fields))
        routes = self._routes
        for field, route in found.items():
            self._misses.pop(field, None)  # published just now: no longer a cached miss
            if route is None:
                routes.pop(field, None)
            else:
                routes[field] = route

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
                        await self._follow(pubsub)
            except asyncio.CancelledError:
                raise
            except (aioredis.RedisError, OSError) as exc:
                log.warning(
                    "route watch lost Redis (%s); retrying in %.1fs", type(exc).__name__, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _follow(self, pubsub: PubSub) -> None:
        """Wait for the next notification (or the safety net's turn) and apply it."""
        due_in = self._loaded_at + self._refresh_interval - time.monotonic()
        message = None
        if due_in > 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=due_in)
        if message is None:
            if time.monotonic() >= self._loaded_at + self._refresh_interval:
                await self.load()  # the safety net
            return
        burst = [message]  # coalesced: one read for all the fields a burst names
        while len(burst) < _MAX_BURST:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.0)
            if message is None:
                break
            burst.append(message)
        fields: set[str] = set()
        for each in burst:
            named = changed_fields(each["data"])
            if named is None:  # names no fields (an older publisher): reload everything
                await self.load()
                return
            fields.update(named)
        if len(fields) > _MAX_CHANGED_FIELDS:
            await self.load()
        elif fields:
            await self.update(fields)
