"""Sleeping homeservers, the worker's side: the sleep pass puts idle homeservers to sleep (the
stops side by side), the wake task wakes (or heals) one, the maintenance window wakes every
sleeper once a day, a bounded number at a time.

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

import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import redis

from platform_core.audit import add_event
from platform_core.celery import TaskNames, celery_app
from platform_core.db import task_session
from platform_core.errors import TemporaryError
from platform_core.models import TenantStatus, utcnow
from platform_core.settings import Settings
from provisioner import repository, steps
from provisioner.backends.base import HomeserverTarget
from provisioner.lease import Lease, kept_alive_together

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
    if not idle:
        return {}
    # Each lease has the operations' short TTL (C3_OPERATION_LEASE_TTL_S), renewed from one
    # thread from the moment it is taken until its own tenant's stop ends, however long the
    # marking of hundreds and the stops take: a worker that dies mid-pass frees its tenants
    # (and their wakes) within that TTL, not minutes later.
    ttl_s = ctx.settings.operation_lease_ttl_s
    held: list[Lease] = []
    marked: list[tuple[uuid.UUID, float, Lease]] = []
    with kept_alive_together(held, ttl_s=ttl_s):
        for tenant_id, last_seen in idle:
            lease = Lease(ctx.redis, ctx.keys.tenant_lease(str(tenant_id)), ttl_s=ttl_s)
            if not lease.acquire():
                counts["skipped_busy"] += 1
                continue
            held.append(lease)
            try:
                if _mark_asleep(ctx, tenant_id, counts):
                    marked.append((tenant_id, last_seen, lease))
                    continue
            except Exception:  # noqa: BLE001 — one tenant's trouble must not keep the others awake
                log.exception("tenant %s not put to sleep", tenant_id)
                counts["failed"] += 1
            lease.release()
        if marked:
            # Proxies reload the route on its notification; what one forwarded before that is
            # in its next flush of last_seen (C3_USAGE_FLUSH_INTERVAL_S), which cancels the
            # sleep.
            time.sleep(ctx.settings.usage_flush_interval_s + 0.5)
            # The stops run side by side (C3_SLEEP_STOP_CONCURRENCY): each is mostly waiting
            # for a process to exit, so fifty idle tenants take a few stops' time, not fifty.
            workers = min(ctx.settings.sleep_stop_concurrency, len(marked))
            with ThreadPoolExecutor(workers, thread_name_prefix="sleep-stop") as pool:
                for outcome in pool.map(lambda m: _finish_sleep_leased(ctx, *m), marked):
                    counts[outcome] += 1
    _count(ctx, "sleep", counts)
    if counts:
        log.info("sleep pass: %s", dict(counts))
    return dict(counts)


def _finish_sleep_leased(
    ctx: steps.Context, tenant_id: uuid.UUID, last_seen: float, lease: Lease
) -> str:
    """``_finish_sleep`` for one tenant (in a pool thread), then its lease released; the
    outcome. One tenant's failure is its own: logged and counted, the others go on."""
    try:
        return _finish_sleep(ctx, tenant_id, last_seen)
    except Exception:  # noqa: BLE001
        log.exception("tenant %s not put to sleep", tenant_id)
        return "failed"
    finally:
        try:
            lease.release()
        except redis.RedisError as exc:  # it expires by itself
            log.warning("lease of %s not released: %s", tenant_id, type(exc).__name__)


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


def _finish_sleep(ctx: steps.Context, tenant_id: uuid.UUID, last_seen: float) -> str:
    """Stop the homeserver, unless a request came meanwhile: then it is awake again. The
    outcome (``slept`` or ``woke_meanwhile``)."""
    now_seen = ctx.redis.hget(ctx.keys.homeserver_last_seen, str(tenant_id))
    if now_seen is not None and float(now_seen) > last_seen:
        _publish_awake(ctx, tenant_id)
        return "woke_meanwhile"
    ctx.backend.sleep(str(tenant_id))
    log.info("tenant %s: homeserver asleep", tenant_id)
    return "slept"


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
    began = time.monotonic()
    deadline = began + ctx.settings.wake_timeout_s
    outcome = "busy"
    try:
        while not lease.acquire():
            if time.monotonic() >= deadline:
                return outcome  # the proxies' wait ends too: 503 + Retry-After
            time.sleep(_LEASE_POLL_S)
        marks = [("task", began), ("lease", time.monotonic())]
        try:
            with lease.kept_alive():
                outcome = _wake_under_lease(ctx, uuid.UUID(tenant_id), stay_awake_s, marks)
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
            if stay_awake_s is not None:
                _report_maintenance_wake(ctx, tenant_id, outcome, stay_awake_s)
        except redis.RedisError as exc:
            log.warning("wake of %s not recorded: %s", tenant_id, type(exc).__name__)


_PORT_TAKEN = "Address already in use"


def _usable_target(ctx: steps.Context, tenant_id: uuid.UUID) -> HomeserverTarget:
    """The tenant's homeserver target, moved to a new port first if another program holds
    its port (``steps.ensure_port_usable``)."""
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        assert tenant is not None and hs is not None
        steps.ensure_port_usable(session, ctx, hs)
        return steps.target_for(ctx, tenant, repository.get_plan(session, tenant.plan_id), hs)


def _start(
    ctx: steps.Context,
    target: HomeserverTarget,
    asleep: bool,
    marks: list[tuple[str, float]],
) -> None:
    if asleep:
        steps.ensure_awake(ctx, target, marks)
    else:
        steps.ensure_running(ctx, target)  # a dead one restarts; a live one answers /health


def _wake_under_lease(
    ctx: steps.Context,
    tenant_id: uuid.UUID,
    stay_awake_s: float | None,
    marks: list[tuple[str, float]],
) -> str:
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        if tenant is None or hs is None or tenant.status is not TenantStatus.ACTIVE:
            return "not_active"
        asleep = hs.asleep_since is not None
    target = _usable_target(ctx, tenant_id)
    marks.append(("read", time.monotonic()))
    running = ctx.backend.is_running(str(tenant_id))
    try:
        _start(ctx, target, asleep, marks)
    except TemporaryError as exc:
        if _PORT_TAKEN not in str(exc):
            raise
        # Another program took a port between the check and the homeserver's bind (rare since
        # local ports lie outside the kernel's ephemeral range, C3_HOMESERVER_PORTS). Once
        # more, on a new port if it is still taken.
        log.warning(
            "tenant %s: a port was taken as its homeserver started; starting again", tenant_id
        )
        target = _usable_target(ctx, tenant_id)
        _start(ctx, target, asleep, marks)
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
    if stay_awake_s is None:
        # Woken for a request: the idle clock restarts.
        pipe.hset(ctx.keys.homeserver_last_seen, str(tenant_id), now)
    else:
        # Woken for maintenance, which is no request: it stays up the window's time and then
        # falls asleep by the normal rule, not an idle time after that (a client's request
        # meanwhile moves last_seen and keeps it up as usual).
        pipe.hset(ctx.keys.homeserver_awake_until, str(tenant_id), now + stay_awake_s)
    pipe.execute()
    marks.append(("published", time.monotonic()))
    if asleep:
        log.info("tenant %s: homeserver woken in %s", tenant_id, _phases(marks))
        return "woken"
    if not running:
        log.info("tenant %s: homeserver restarted (healed)", tenant_id)
        return "healed"
    return "already_awake"


def _phases(marks: list[tuple[str, float]]) -> str:
    """``marks`` (each step's name and when it ended, the first: when the task began) as
    "0.93 s (lease 0.00, read 0.01, ...)": where a slow wake spent its time."""
    steps_taken = ", ".join(
        f"{name} {end - start:.2f}" for (_, start), (name, end) in pairwise(marks)
    )
    return f"{marks[-1][1] - marks[0][1]:.2f} s ({steps_taken})"


# Maintenance window ---------------------------------------------------------------------------
#
# Sleeping homeservers miss their scheduled jobs, so each is woken once a day for a while. Not
# all at once (a thousand Synapse starts would need ~125 GB and the CPU for many minutes): the
# window opens with a snapshot of the sleepers (``maintenance_todo``), and a pass every
# C3_SLEEP_CHECK_INTERVAL_S wakes the next few while fewer than C3_SLEEP_MAINTENANCE_CONCURRENCY
# homeservers are awake for maintenance (``maintenance_slots``). Everything is in Redis and
# every step is atomic there, so a worker restarted mid-window resumes it, two passes at once
# never wake a tenant twice, and a wake whose worker died costs a slot only for a bounded time.

_MAINTENANCE_KEY_TTL_S = 3 * 86400  # a window's keys outlive it (it must not open again)
_MAINTENANCE_WAKE_EXPIRES_S = 600.0  # a maintenance wake not started by then is dropped

# KEYS: opened marker, todo set, windows zset. ARGV: opened time, TTL, window, tenant ids…
_OPEN_WINDOW = """
if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
for i = 4, #ARGV do redis.call('sadd', KEYS[2], ARGV[i]) end
if #ARGV >= 4 then
  redis.call('expire', KEYS[2], ARGV[2])
  redis.call('zadd', KEYS[3], ARGV[1], ARGV[3])
end
return 1
"""
# KEYS: todo set, slots hash. ARGV: concurrency, how many at most, the slot's value. Takes
# tenants out of the window's todo into a slot each while slots are free; the tenants taken.
_CLAIM = """
local n = math.min(tonumber(ARGV[1]) - redis.call('hlen', KEYS[2]), tonumber(ARGV[2]))
local taken = {}
for _ = 1, n do
  local tenant = redis.call('spop', KEYS[1])
  if not tenant then break end
  redis.call('hset', KEYS[2], tenant, ARGV[3])
  taken[#taken + 1] = tenant
end
return taken
"""
# KEYS: slots hash. ARGV: tenant, new value ('' frees the slot). Only a slot still held: one
# the pass already gave up on stays free. A slot already woken stays held when the same wake
# runs again (redelivered after its worker died) and finds the homeserver awake.
_REPORT = """
local slot = redis.call('hget', KEYS[1], ARGV[1])
if not slot then return 0 end
if ARGV[2] == '' then
  if string.find(slot, '"woken"', 1, true) then return 0 end
  return redis.call('hdel', KEYS[1], ARGV[1])
end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

SendWake = Callable[[str, float], None]


def wake_for_maintenance(
    ctx: steps.Context,
    window: str | None = None,
    *,
    now: datetime | None = None,
    send: SendWake | None = None,
) -> int:
    """One maintenance pass (beat, every C3_SLEEP_CHECK_INTERVAL_S): opens the day's window at
    C3_SLEEP_MAINTENANCE_HOUR_UTC (or ``window``, a name of the caller's, at once), frees the
    slots of homeservers no longer awake for maintenance, and sends the next wakes while slots
    are free. How many wakes it sent."""
    now = now or datetime.now(UTC)
    name = window or _due_window(ctx.settings.sleep_maintenance_hour_utc, now)
    if name is not None:
        _open_window(ctx, name, now.timestamp())
    _free_slots(ctx, now.timestamp())
    return _wake_next(ctx, now.timestamp(), send or _send_maintenance_wake)


def _due_window(hour_utc: int | None, now: datetime) -> str | None:
    """The daily window due by ``now``: named by its UTC date, from its hour to midnight (a
    beat down at the hour opens it at its next pass that day)."""
    if hour_utc is None or now.hour < hour_utc:
        return None
    return now.date().isoformat()


def _open_window(ctx: steps.Context, window: str, now: float) -> None:
    """Open ``window`` once: its todo is the tenants asleep now."""
    if ctx.redis.exists(ctx.keys.maintenance_opened(window)):
        return
    with task_session() as session:
        sleeping = [str(tenant_id) for tenant_id in repository.sleeping_tenants(session)]
    keys = [
        ctx.keys.maintenance_opened(window),
        ctx.keys.maintenance_todo(window),
        ctx.keys.maintenance_windows,
    ]
    if ctx.redis.eval(_OPEN_WINDOW, 3, *keys, now, _MAINTENANCE_KEY_TTL_S, window, *sleeping):
        log.info("maintenance window %s: %d sleeping homeservers to wake", window, len(sleeping))


def _pending_limit_s(settings: Settings) -> float:
    """Longest a sent maintenance wake can take to report: its message expires unstarted
    after _MAINTENANCE_WAKE_EXPIRES_S; once started it waits for the lease at most the wake
    timeout and for the homeserver at most its start timeout."""
    return (
        _MAINTENANCE_WAKE_EXPIRES_S
        + settings.wake_timeout_s
        + settings.homeserver_start_timeout_s
        + 60.0
    )


def _tail_s(settings: Settings) -> float:
    """How long after its stay a homeserver takes to fall asleep by the normal rule: the next
    sleep pass (and one running late), the flush grace, a stop."""
    return 2 * settings.sleep_check_interval_s + settings.usage_flush_interval_s + 0.5 + 15.0


def _free_slots(ctx: steps.Context, now: float) -> None:
    """Free the slot of every homeserver no longer awake for maintenance: asleep again (or
    suspended, or deleted), in a client's use since its wake, past its stay by more than it
    takes to fall asleep (then something due keeps it up, by the normal rule), or whose wake
    never reported (lost with its worker, or expired in the queue)."""
    slots = {
        _text(tenant): json.loads(value)
        for tenant, value in ctx.redis.hgetall(ctx.keys.maintenance_slots).items()
    }
    if not slots:
        return
    with task_session() as session:
        awake = {str(tenant_id) for tenant_id, _ in repository.awake_active_homeservers(session)}
    woken = [tenant for tenant, slot in slots.items() if "woken" in slot]
    seen: dict[str, float] = {}
    if woken:
        for tenant, last in zip(
            woken, ctx.redis.hmget(ctx.keys.homeserver_last_seen, woken), strict=True
        ):
            if last is not None:
                seen[tenant] = float(last)
    pending_limit, tail = _pending_limit_s(ctx.settings), _tail_s(ctx.settings)
    done: list[str] = []
    for tenant, slot in slots.items():
        if "woken" not in slot:
            if now > slot["sent"] + pending_limit:
                log.warning("maintenance wake of %s never reported; its slot is freed", tenant)
                done.append(tenant)
        elif (
            tenant not in awake
            or seen.get(tenant, 0.0) > slot["woken"]
            or now > slot["until"] + tail
        ):
            done.append(tenant)
    if done:
        ctx.redis.hdel(ctx.keys.maintenance_slots, *done)


def _wake_next(ctx: steps.Context, now: float, send: SendWake) -> int:
    """Send the next maintenance wakes, oldest window first, while slots are free; at most a
    share per pass that spreads the starts over the stay (waves of one start per pass rather
    than a burst of C3_SLEEP_MAINTENANCE_CONCURRENCY every stay)."""
    settings = ctx.settings
    concurrency = settings.sleep_maintenance_concurrency
    stay = settings.sleep_maintenance_stay_s
    interval = settings.sleep_check_interval_s
    per_pass = min(concurrency, max(1, math.ceil(concurrency * interval / max(stay, interval))))
    sent = 0
    for raw in ctx.redis.zrange(ctx.keys.maintenance_windows, 0, -1):
        window = _text(raw)
        todo = ctx.keys.maintenance_todo(window)
        while sent < per_pass:
            slot = json.dumps({"window": window, "sent": now})
            claimed = [
                _text(t)
                for t in ctx.redis.eval(
                    _CLAIM, 2, todo, ctx.keys.maintenance_slots, concurrency, per_pass - sent, slot
                )
            ]
            if not claimed:
                break
            with task_session() as session:
                sleeping = {str(t) for t in repository.sleeping_tenants(session, claimed)}
            for tenant in claimed:
                if tenant in sleeping:
                    send(tenant, stay)
                    sent += 1
                else:  # a client woke it since the window opened (or it is gone): done
                    ctx.redis.hdel(ctx.keys.maintenance_slots, tenant)
        if not ctx.redis.exists(todo):
            ctx.redis.zrem(ctx.keys.maintenance_windows, window)
            log.info("maintenance window %s: every sleeper woken", window)
        if sent >= per_pass:
            break
    if sent:
        log.info("maintenance window: %d homeservers woken", sent)
    return sent


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _send_maintenance_wake(tenant_id: str, stay_awake_s: float) -> None:
    celery_app().send_task(
        TaskNames.WAKE_HOMESERVER,
        args=[tenant_id, stay_awake_s],
        expires=_MAINTENANCE_WAKE_EXPIRES_S,
    )


def _report_maintenance_wake(
    ctx: steps.Context, tenant_id: str, outcome: str, stay_awake_s: float
) -> None:
    """A maintenance wake's end, on its slot: woken, it holds the slot until the homeserver
    is asleep again; otherwise (already awake for a client, failed, busy, gone) it frees it."""
    value = ""
    if outcome == "woken":
        now = time.time()
        value = json.dumps({"woken": now, "until": now + stay_awake_s})
    ctx.redis.eval(_REPORT, 1, ctx.keys.maintenance_slots, tenant_id, value)


def _count(ctx: steps.Context, prefix: str, counts: Counter[str]) -> None:
    """Add a pass's or a wake's outcomes to the counters ``GET /metrics`` reports."""
    if not counts:
        return
    pipe = ctx.redis.pipeline()
    for outcome, n in counts.items():
        pipe.hincrby(ctx.keys.sleep_metrics, f"{prefix}:{outcome}", n)
    pipe.execute()
