"""Sleeping homeservers, the worker's side: the sleep pass puts idle homeservers to sleep, the
wake task wakes (or heals) one, the maintenance wake wakes them all once a day.

A tenant whose plan sets ``limits.idle_after_seconds`` sleeps once no proxy forwarded anything
for it that long (the proxies write each tenant's last request time to Redis once per flush
interval: ``RedisKeys.homeserver_last_seen``) and its homeserver has nothing due — no pending
delayed event, no background job (``Backend.due_work``; C3 configures no e-mail sender, so no
e-mail notification can be due). Sleeping: the homeserver row says ``asleep_since``, the route
says ``asleep`` (proxies hold the tenant's requests from then on), then — after a grace in
which a request the proxies had already forwarded shows up in ``last_seen`` and cancels the
sleep — the backend stops the process (local) or scales it to 0 (kubernetes). The tenant stays
``active``.

Waking: the first request at any proxy sets ``RedisKeys.wake_requested`` (SET NX) and sends
``wake_homeserver``; the task takes the tenant's lease (waiting out an operation or reconcile
that holds it, at most ``C3_WAKE_TIMEOUT_S``), starts the homeserver, waits for ``/health``,
clears ``asleep_since`` and publishes the awake route. The same task heals: for an awake tenant
whose upstream refused a proxy's connection it restarts a dead homeserver (audited as
``homeserver.restarted`` by ``system:wake``) and does nothing to a live one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from typing import Any

import redis

from platform_core.audit import add_event
from platform_core.celery import TaskNames, send_task
from platform_core.db import task_session
from platform_core.models import TenantStatus, utcnow
from provisioner import repository, steps
from provisioner.lease import Lease

log = logging.getLogger(__name__)

ACTOR = "system:wake"  # the audit log's name for a heal (a restart asked for by a proxy)
SLEEP_OUTCOMES = ("slept", "kept_awake_due_work", "woke_meanwhile", "skipped_busy", "failed")
WAKE_OUTCOMES = ("woken", "healed", "already_awake", "not_active", "busy", "failed")
_LEASE_POLL_S = 0.05


def idle_after_s(limits: dict[str, Any]) -> float:
    """The plan's ``idle_after_seconds`` (absent, 0 or null: never sleeps)."""
    return float(limits.get("idle_after_seconds") or 0)


# Sleep --------------------------------------------------------------------------------------


def sleep_idle(ctx: steps.Context) -> dict[str, int]:
    """One sleep pass: every idle homeserver with nothing due goes to sleep."""
    counts: Counter[str] = Counter()
    with task_session() as session:
        candidates = [
            (tenant_id, after)
            for tenant_id, limits in repository.awake_active_homeservers(session)
            if (after := idle_after_s(limits)) > 0
        ]
    idle = _idle(ctx, candidates)
    marked: list[tuple[uuid.UUID, float, Lease]] = []
    for tenant_id, last_seen in idle:
        lease = Lease(ctx.redis, ctx.keys.tenant_lease(str(tenant_id)))
        if not lease.acquire():
            counts["skipped_busy"] += 1
            continue
        try:
            if _mark_asleep(ctx, tenant_id, counts):
                marked.append((tenant_id, last_seen, lease))
                continue
        except Exception:  # noqa: BLE001 — one tenant's trouble must not keep the others awake
            log.exception("tenant %s not put to sleep", tenant_id)
            counts["failed"] += 1
        lease.release()
    if marked:
        # Proxies reload the route on its notification; what one forwarded before that is in
        # its next flush of last_seen (C3_USAGE_FLUSH_INTERVAL_S), which cancels the sleep.
        time.sleep(ctx.settings.usage_flush_interval_s + 0.5)
        for tenant_id, last_seen, lease in marked:
            try:
                _finish_sleep(ctx, tenant_id, last_seen, counts)
            except Exception:  # noqa: BLE001
                log.exception("tenant %s not put to sleep", tenant_id)
                counts["failed"] += 1
            finally:
                lease.release()
    _count(ctx, "sleep", counts)
    if counts:
        log.info("sleep pass: %s", dict(counts))
    return dict(counts)


def _idle(
    ctx: steps.Context, candidates: list[tuple[uuid.UUID, float]]
) -> list[tuple[uuid.UUID, float]]:
    """The candidates idle for their plan's time and not kept up by a maintenance wake, with
    the last-seen time they were judged by. A tenant no proxy has reported yet (just
    provisioned, or from before sleeping existed) starts its clock now."""
    if not candidates:
        return []
    now = time.time()
    ids = [str(tenant_id) for tenant_id, _ in candidates]
    seen = ctx.redis.hmget(ctx.keys.homeserver_last_seen, ids)
    until = ctx.redis.hmget(ctx.keys.homeserver_awake_until, ids)
    idle: list[tuple[uuid.UUID, float]] = []
    pipe = ctx.redis.pipeline()
    for (tenant_id, after), last, keep in zip(candidates, seen, until, strict=True):
        if last is None:
            pipe.hsetnx(ctx.keys.homeserver_last_seen, str(tenant_id), now)
        elif now - float(last) >= after and (keep is None or now >= float(keep)):
            idle.append((tenant_id, float(last)))
    pipe.execute()
    return idle


def _mark_asleep(ctx: steps.Context, tenant_id: uuid.UUID, counts: Counter[str]) -> bool:
    """Under the tenant's lease: unless something is due, record the homeserver asleep and
    publish the asleep route (proxies hold new requests from now on). True if marked."""
    due = ctx.backend.due_work(str(tenant_id))
    if due and any(due.values()):
        counts["kept_awake_due_work"] += 1
        log.debug("tenant %s stays awake: %s due", tenant_id, due)
        return False
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        if tenant is None or hs is None or tenant.status is not TenantStatus.ACTIVE:
            return False
        if hs.asleep_since is not None:
            return False
        hs.asleep_since = utcnow()
        plan = repository.get_plan(session, tenant.plan_id)
        route = steps.route_for(ctx, tenant, hs, steps.target_for(ctx, tenant, plan, hs))
    steps.publish(ctx, route)
    return True


def _finish_sleep(
    ctx: steps.Context, tenant_id: uuid.UUID, last_seen: float, counts: Counter[str]
) -> None:
    """Stop the homeserver, unless a request came meanwhile: then it is awake again."""
    now_seen = ctx.redis.hget(ctx.keys.homeserver_last_seen, str(tenant_id))
    if now_seen is not None and float(now_seen) > last_seen:
        _publish_awake(ctx, tenant_id)
        counts["woke_meanwhile"] += 1
        return
    ctx.backend.sleep(str(tenant_id))
    counts["slept"] += 1
    log.info("tenant %s: homeserver asleep", tenant_id)


def _publish_awake(ctx: steps.Context, tenant_id: uuid.UUID) -> None:
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        if tenant is None or hs is None:
            return
        hs.asleep_since = None
        plan = repository.get_plan(session, tenant.plan_id)
        route = steps.route_for(ctx, tenant, hs, steps.target_for(ctx, tenant, plan, hs))
    steps.publish(ctx, route)


# Wake ---------------------------------------------------------------------------------------


def wake(ctx: steps.Context, tenant_id: str, *, stay_awake_s: float | None = None) -> str:
    """Wake (or heal) one tenant's homeserver; the outcome (``WAKE_OUTCOMES``). The wake
    request is cleared at the end whatever happened, so the next request may ask again."""
    counts: Counter[str] = Counter(wake_tasks=1)
    lease = Lease(
        ctx.redis, ctx.keys.tenant_lease(tenant_id), ttl_s=ctx.settings.operation_lease_ttl_s
    )
    deadline = time.monotonic() + ctx.settings.wake_timeout_s
    outcome = "busy"
    try:
        while not lease.acquire():
            if time.monotonic() >= deadline:
                return outcome  # the proxies' wait ends too: 503 + Retry-After
            time.sleep(_LEASE_POLL_S)
        try:
            with lease.kept_alive():
                outcome = _wake_under_lease(ctx, uuid.UUID(tenant_id), stay_awake_s)
        except Exception:
            outcome = "failed"
            raise
        finally:
            lease.release()
        return outcome
    finally:
        counts[outcome] += 1
        try:
            ctx.redis.delete(ctx.keys.wake_requested(tenant_id))
            _count(ctx, "wake", counts)
        except redis.RedisError as exc:
            log.warning("wake of %s not recorded: %s", tenant_id, type(exc).__name__)


def _wake_under_lease(ctx: steps.Context, tenant_id: uuid.UUID, stay_awake_s: float | None) -> str:
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        if tenant is None or hs is None or tenant.status is not TenantStatus.ACTIVE:
            return "not_active"
        asleep = hs.asleep_since is not None
        steps.ensure_port_usable(session, ctx, hs)
        target = steps.target_for(ctx, tenant, repository.get_plan(session, tenant.plan_id), hs)
    running = ctx.backend.is_running(str(tenant_id))
    if asleep:
        steps.ensure_awake(ctx, target)
    else:
        steps.ensure_running(ctx, target)  # a dead one restarts; a live one answers /health
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        assert tenant is not None and hs is not None
        hs.asleep_since = None
        hs.upstream_url = ctx.backend.upstream_url(target)
        route = steps.route_for(ctx, tenant, hs, target)
        if not asleep and not running:
            add_event(
                session,
                actor=ACTOR,
                action="homeserver.restarted",
                target_type="tenant",
                target_id=tenant_id,
                request_id=f"wake-{uuid.uuid4().hex[:16]}",
                tenant_id=tenant_id,
                details={
                    "tenant_status": "active",
                    "observed": "upstream refused a proxy's connection; not running",
                    "desired": "running",
                },
            )
    steps.publish(ctx, route)
    now = time.time()
    pipe = ctx.redis.pipeline()
    pipe.hset(ctx.keys.homeserver_last_seen, str(tenant_id), now)  # awake: the idle clock restarts
    if stay_awake_s:
        pipe.hset(ctx.keys.homeserver_awake_until, str(tenant_id), now + stay_awake_s)
    pipe.execute()
    if asleep:
        log.info("tenant %s: homeserver woken", tenant_id)
        return "woken"
    if not running:
        log.info("tenant %s: homeserver restarted (healed)", tenant_id)
        return "healed"
    return "already_awake"


def wake_for_maintenance(ctx: steps.Context) -> int:
    """The daily maintenance window: every sleeping homeserver is woken (one wake task each,
    as many at once as the workers run) and kept up ``C3_SLEEP_MAINTENANCE_STAY_S`` for its
    scheduled jobs; then it falls asleep by the normal rule. How many were asked to wake."""
    with task_session() as session:
        sleeping = repository.sleeping_tenants(session)
    for tenant_id in sleeping:
        send_task(TaskNames.WAKE_HOMESERVER, str(tenant_id), ctx.settings.sleep_maintenance_stay_s)
    if sleeping:
        log.info("maintenance window: waking %d sleeping homeservers", len(sleeping))
    return len(sleeping)


def _count(ctx: steps.Context, prefix: str, counts: Counter[str]) -> None:
    """Add a pass's or a wake's outcomes to the counters ``GET /metrics`` reports."""
    if not counts:
        return
    pipe = ctx.redis.pipeline()
    for outcome, n in counts.items():
        pipe.hincrby(ctx.keys.sleep_metrics, f"{prefix}:{outcome}", n)
    pipe.execute()
