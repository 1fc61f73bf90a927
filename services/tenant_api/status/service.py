"""The platform's health as an operator sees it (``GET /v1/status``): each component checked
at once, each check bounded, none able to fail the answer — a component that does not answer
is reported down with the reason. A tenant's homeserver log (``GET /v1/tenants/{id}/logs``)
comes from a worker, the only part that reaches homeservers."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import anyio.to_thread
import httpx
import redis.asyncio as aioredis

from platform_core import worker_requests
from platform_core.celery import TaskNames, celery_app
from platform_core.errors import C3Error, Conflict, TemporaryError
from platform_core.metrics import ReconcileStats
from platform_core.models import Homeserver, Tenant
from platform_core.redis import keys_for
from platform_core.settings import Settings
from tenant_api.kit.repository import ping_database
from tenant_api.readiness.service import connect_origin
from tenant_api.status.schemas import ComponentStatus, HomeserverStatus, LogsOut, StatusOut


def version() -> str:
    try:
        return metadata.version("c3")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


async def _database(settings: Settings) -> ComponentStatus:
    try:
        await asyncio.wait_for(ping_database(), settings.status_check_timeout_s)
    except (Exception, TimeoutError) as exc:  # down is the answer, not an error
        return ComponentStatus(name="database", up=False, detail=_reason(exc))
    return ComponentStatus(name="database", up=True, detail="SELECT 1 answered")


async def _redis(settings: Settings) -> tuple[ComponentStatus, ReconcileStats | None]:
    timeout = settings.status_check_timeout_s
    client = aioredis.Redis.from_url(
        settings.require_redis_url(), socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        await client.ping()
        raw = await client.hgetall(keys_for(settings).reconcile_metrics)
    except (aioredis.RedisError, OSError) as exc:
        return ComponentStatus(name="redis", up=False, detail=_reason(exc)), None
    finally:
        await client.aclose()
    return ComponentStatus(
        name="redis", up=True, detail="PING answered"
    ), ReconcileStats.from_redis(raw)


async def _proxy(settings: Settings) -> ComponentStatus:
    url = connect_origin(settings, settings.effective_proxy_public_url) + "/_c3/health"
    try:
        async with httpx.AsyncClient(timeout=settings.status_check_timeout_s) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        return ComponentStatus(name="proxy", up=False, detail=f"{url}: {_reason(exc)}")
    up = response.status_code == 200
    return ComponentStatus(name="proxy", up=up, detail=f"{url} answered {response.status_code}")


def _ping_workers(timeout: float, limit: int | None) -> list[str]:
    """The nodes answering within ``timeout``: Celery collects replies for that long, since
    it cannot know how many workers there are — unless ``limit`` replies are enough."""
    replies: list[dict[str, Any]] = celery_app().control.ping(timeout=timeout, limit=limit) or []
    return sorted(node for reply in replies for node in reply)


async def _ping(settings: Settings, limit: int | None = None) -> list[str] | str:
    """The Celery nodes answering a ping (all of them, or the first ``limit``), or why none
    could be asked."""
    try:
        return await anyio.to_thread.run_sync(_ping_workers, settings.status_check_timeout_s, limit)
    except Exception as exc:  # the broker is unreachable: that is the answer
        return f"ping failed: {_reason(exc)}"


def _workers(
    settings: Settings, pinged: list[str] | str, reconcile: ReconcileStats | None
) -> ComponentStatus:
    last = ""
    if reconcile is not None and reconcile.last_run_at is not None:
        last = f"; last reconcile pass {max(0.0, time.time() - reconcile.last_run_at):.0f} s ago"
    if isinstance(pinged, str):
        return ComponentStatus(name="workers", up=False, detail=pinged + last)
    if not pinged:
        timeout = settings.status_check_timeout_s
        return ComponentStatus(
            name="workers", up=False, detail=f"no worker answered a ping in {timeout:g} s{last}"
        )
    return ComponentStatus(
        name="workers", up=True, detail=f"{len(pinged)} answered ({', '.join(pinged)}){last}"
    )


async def _homeservers(settings: Settings) -> tuple[ComponentStatus, list[HomeserverStatus]]:
    try:
        found = await worker_requests.ask(
            settings, TaskNames.HOMESERVER_HEALTH, wait_s=settings.worker_answer_timeout_s
        )
    except C3Error as exc:
        return ComponentStatus(name="homeservers", up=False, detail=f"unknown: {exc.detail}"), []
    homeservers = [HomeserverStatus.model_validate(item) for item in found["homeservers"]]
    down = [h.slug for h in homeservers if not h.up]
    detail = f"{len(homeservers) - len(down)} of {len(homeservers)} active tenants' homeservers up"
    if down:
        detail += f"; down: {', '.join(down[:20])}" + (" …" if len(down) > 20 else "")
    return ComponentStatus(name="homeservers", up=not down, detail=detail), homeservers


async def platform_status(settings: Settings) -> StatusOut:
    """Every component's state; takes at most the longest single check (they run at once)."""
    database, (redis_status, reconcile), proxy, pinged = await asyncio.gather(
        _database(settings), _redis(settings), _proxy(settings), _ping(settings)
    )
    workers = _workers(settings, pinged, reconcile)
    if workers.up:
        homeservers, each = await _homeservers(settings)
    else:  # nobody to ask: say so at once instead of waiting for an answer that cannot come
        homeservers, each = (
            ComponentStatus(name="homeservers", up=False, detail="unknown: no worker to ask"),
            [],
        )
    api = ComponentStatus(name="api", up=True, detail=f"answering (C3 {version()})")
    components = [api, database, redis_status, proxy, workers, homeservers]
    return StatusOut(
        status="ok" if all(c.up for c in components) else "degraded",
        checked_at=datetime.now(UTC),
        version=version(),
        components=components,
        homeservers=each,
    )


async def homeserver_logs(
    tenant: Tenant, homeserver: Homeserver | None, lines: int, settings: Settings
) -> LogsOut:
    """The homeserver's last ``lines`` log lines, as a worker reads them; 409 when the tenant
    never got a homeserver, 503 when no worker is there to read them."""
    if homeserver is None:
        raise Conflict(
            f"tenant is {tenant.status.value} and has no homeserver yet, so no log to read"
        )
    pinged = await _ping(settings, limit=1)  # one worker is enough to ask
    if not pinged or isinstance(pinged, str):
        raise TemporaryError(
            "no worker is running to read the homeserver's log "
            f"({pinged or 'none answered a ping'})",
            retry_after=5,
        )
    found = await worker_requests.ask(
        settings,
        TaskNames.HOMESERVER_LOGS,
        str(tenant.id),
        lines,
        wait_s=settings.worker_answer_timeout_s,
    )
    return LogsOut(tenant_id=tenant.id, backend=found["backend"], lines=found["lines"])
