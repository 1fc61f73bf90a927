"""One scrape: the reconcile and usage counters the workers keep in Redis and the database
gauges."""

from __future__ import annotations

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.errors import TemporaryError
from platform_core.metrics import PlatformSnapshot, ReconcileStats, SleepStats, UsageStats
from platform_core.redis import keys_for
from platform_core.routes import Route, read_routes
from platform_core.settings import Settings
from tenant_api.metrics.repository import MetricsRepository


async def snapshot(session: AsyncSession, settings: Settings) -> PlatformSnapshot:
    try:
        async with aioredis.from_url(settings.require_redis_url()) as client:
            keys = keys_for(settings)
            raw = await client.hgetall(keys.reconcile_metrics)
            usage = await client.hgetall(keys.usage_metrics)
            sleep = await client.hgetall(keys.sleep_metrics)
    except (aioredis.RedisError, OSError) as exc:
        # A failed scrape (503) rather than counters that silently read zero.
        raise TemporaryError(
            f"metrics unavailable: Redis is not reachable ({type(exc).__name__})"
        ) from exc
    return PlatformSnapshot(
        reconcile=ReconcileStats.from_redis(raw),
        tenants=await MetricsRepository(session).tenants_by_status(),
        operations=await MetricsRepository(session).operations_by_state(),
        usage=UsageStats.from_redis(usage),
        homeservers=await MetricsRepository(session).homeservers_by_state(),
        sleep=SleepStats.from_redis(sleep),
    )


async def published_routes(settings: Settings) -> list[Route]:
    """Every route in the route table (each tenant under its host and slug, possibly more)."""
    try:
        async with aioredis.from_url(settings.require_redis_url()) as client:
            table = await read_routes(client, keys_for(settings))
    except (aioredis.RedisError, OSError) as exc:
        raise TemporaryError(
            f"homeserver targets unavailable: Redis is not reachable ({type(exc).__name__})"
        ) from exc
    return list(table.values())
