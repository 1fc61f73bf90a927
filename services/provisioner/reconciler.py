"""Reconcile: make observed homeserver state match desired state, and repair drift.

Runs at start-up and periodically (beat). For each tenant it takes the tenant's lease (skipping
tenants another worker is acting on): an active tenant's homeserver is (re)started and its route
re-published if missing or stale (and its config re-rendered from its plan: a changed config
restarts it; what someone else changed of its deployment — a deleted Service, an edited
ConfigMap, a scaled-down StatefulSet on Kubernetes — is applied again); a sleeping tenant's
homeserver stays stopped and only its route is kept right (a sleeper whose route is right is
passed over without its lease); a suspended tenant's homeserver is kept stopped (one that is
stopped, with its route right, is passed over likewise); a deleted tenant's homeserver is
stopped, its route withdrawn and its archives purged after their retention (one with nothing
of that left to do is passed over without its lease); an operation stuck in pending/running
with nobody holding its lease (and no retry scheduled) is re-enqueued.

What a pass did is visible two ways: every action on a tenant is an audit event by
``system:reconcile`` on that tenant (what was observed, what was desired; the pass's id as the
request id), so operators and the tenant's admins see it in ``GET /v1/audit-events``; and the
pass's counts, end time and duration are added to the platform metrics (``GET /metrics``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import redis
from sqlalchemy.orm import Session

from platform_core import lifecycle, operation_history
from platform_core.audit import add_event
from platform_core.celery import TASK_FOR_OPERATION_KIND, send_task
from platform_core.db import task_session
from platform_core.metrics import ReconcileAction, record_reconcile_run
from platform_core.models import Homeserver, Plan, Tenant, TenantStatus, utcnow
from platform_core.routes import (
    Route,
    host_field,
    is_published,
    published_payloads,
    published_under,
    slug_field,
)
from provisioner import repository, steps
from provisioner.lease import Lease

log = logging.getLogger(__name__)

ACTOR = "system:reconcile"  # the audit log's name for this loop ("<kind>:<subject>")
_MAX_ERROR_DETAIL = 500


class Pass:
    """One reconcile pass: how often it took each action, and an audit event per action —
    except what would only repeat itself every interval: a busy tenant (its operation is in the
    audit log already) and the same failure as last time are counted, not written again."""

    def __init__(self) -> None:
        self.id = f"reconcile-{uuid.uuid4().hex[:16]}"  # request id of the pass's events
        self.counts: Counter[str] = Counter()

    def record(
        self,
        action: ReconcileAction,
        tenant_id: uuid.UUID,
        details: dict[str, Any],
        *,
        session: Session | None = None,
        target: tuple[str, uuid.UUID] | None = None,
    ) -> None:
        """Write ``action``'s event (in ``session`` when the repair itself is a database
        change, so both commit together) and count it."""
        self.counts[action.value] += 1
        if action is ReconcileAction.SKIPPED_BUSY or self._repeats_last_failure(
            action, tenant_id, details
        ):
            return
        target_type, target_id = target or ("tenant", tenant_id)

        def write(into: Session) -> None:
            add_event(
                into,
                actor=ACTOR,
                action=action.value,
                target_type=target_type,
                target_id=target_id,
                request_id=self.id,
                tenant_id=tenant_id,
                details=details,
            )

        if session is not None:
            write(session)
        else:
            with task_session() as own:
                write(own)

    @staticmethod
    def _repeats_last_failure(
        action: ReconcileAction, tenant_id: uuid.UUID, details: dict[str, Any]
    ) -> bool:
        if action is not ReconcileAction.FAILED:
            return False
        with task_session() as session:
            last = repository.last_audit_event_by(session, tenant_id, ACTOR)
            return bool(
                last is not None and last.action == action.value and last.details == details
            )


def reconcile_all(ctx: steps.Context) -> dict[str, int]:
    run = Pass()
    started = time.monotonic()
    try:
        with task_session() as session:
            active = [t.id for t in repository.tenants_with_status(session, [TenantStatus.ACTIVE])]
            deleted = [
                _Deleted(t.id, t.server_name, t.slug, t.deleted_at)
                for t in repository.tenants_with_status(session, [TenantStatus.DELETED])
            ]
            suspended = [
                t.id for t in repository.tenants_with_status(session, [TenantStatus.SUSPENDED])
            ]
        in_place = _stopped_in_place(ctx)
        for tenant_id in active:
            if tenant_id not in in_place:
                _with_lease(ctx, tenant_id, run, _reconcile_active)
        for tenant_id in suspended:
            if tenant_id not in in_place:
                _with_lease(ctx, tenant_id, run, _reconcile_suspended)
        settled = _deleted_settled(ctx, deleted)
        for gone in deleted:
            if gone.tenant_id not in settled:
                _with_lease(ctx, gone.tenant_id, run, _reconcile_deleted)
        _requeue_stuck_operations(ctx, run)
    except Exception:
        run.counts[ReconcileAction.FAILED.value] += 1  # the pass itself broke (database, Redis)
        raise
    finally:
        _export_metrics(ctx, run, time.monotonic() - started)
    if run.counts:
        log.info("reconcile %s: %s", run.id, dict(run.counts))
    return dict(run.counts)


def _stopped_in_place(ctx: steps.Context) -> set[uuid.UUID]:
    """The tenants whose homeserver is stopped on purpose (a sleeper's, a suspended tenant's)
    and whose published route is the one their records make: a pass has nothing to do for
    them, so it takes neither their lease nor their secrets. Read in one query and one
    ``HMGET`` per 2,000 route fields (a suspended tenant's homeserver is also asked after, all
    at once: it must not run); on a node of mostly sleepers, a lease, three reads, a decryption
    and two ``HGET`` per sleeper every pass were most of a worker's time (docs/benchmarks.md)."""
    with task_session() as session:
        routes = [
            (tenant.id, tenant.status is TenantStatus.SUSPENDED, route)
            for tenant, plan, hs in repository.stopped_homeservers(session)
            if (route := _recorded_route(tenant, plan, hs)) is not None
        ]
    published = published_under(
        ctx.redis, ctx.keys, [field for *_, route in routes for field in route.fields()]
    )
    routed_right = [
        (tenant_id, suspended)
        for tenant_id, suspended, route in routes
        if all(published[field] == route.to_json().encode() for field in route.fields())
    ]
    stopped = _surely_stopped(
        ctx, [tenant_id for tenant_id, suspended in routed_right if suspended]
    )
    return {
        tenant_id for tenant_id, suspended in routed_right if not suspended or tenant_id in stopped
    }


class _Deleted(NamedTuple):
    tenant_id: uuid.UUID
    server_name: str
    slug: str
    deleted_at: datetime | None


def _deleted_settled(ctx: steps.Context, deleted: list[_Deleted]) -> set[uuid.UUID]:
    """The deleted tenants a pass has nothing to do for: homeserver not running, archives
    purged (or their retention not run out), no route published. Their purges are read in one
    ``SMEMBERS`` and their routes in one ``HMGET`` per 2,000 fields, and the backend is asked
    after all of them at once (``running_among``), without their leases and their reads:
    deleted tenants only accumulate, and each cost a pass ~2 ms of round trips
    (docs/benchmarks.md)."""
    if not deleted:
        return set()
    purged = {
        m.decode() if isinstance(m, bytes) else m
        for m in ctx.redis.smembers(ctx.keys.archives_purged)
    }
    cutoff = _archive_cutoff(ctx)
    published = published_under(
        ctx.redis,
        ctx.keys,
        [f for gone in deleted for f in (host_field(gone.server_name), slug_field(gone.slug))],
    )
    return _surely_stopped(
        ctx,
        [
            gone.tenant_id
            for gone in deleted
            if (
                published[host_field(gone.server_name)] is None
                and published[slug_field(gone.slug)] is None
                and (str(gone.tenant_id) in purged or _retention_running(gone.deleted_at, cutoff))
            )
        ],
    )


# A tenant whose records or backend trouble these looks is looked at under its lease instead,
# where its failure is recorded and the pass goes on with the others.
def _recorded_route(tenant: Tenant, plan: Plan, hs: Homeserver) -> Route | None:
    try:
        return steps.recorded_route(tenant, plan, hs)
    except Exception:  # noqa: BLE001
        return None


def _surely_stopped(ctx: steps.Context, tenant_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``tenant_ids`` whose homeserver the backend reports not running, asked all at
    once (``Backend.running_among``); none when the backend cannot tell."""
    if not tenant_ids:
        return set()
    try:
        running = ctx.backend.running_among([str(tenant_id) for tenant_id in tenant_ids])
    except Exception:  # noqa: BLE001
        return set()
    return {tenant_id for tenant_id in tenant_ids if str(tenant_id) not in running}


def _export_metrics(ctx: steps.Context, run: Pass, duration_s: float) -> None:
    try:
        record_reconcile_run(
            ctx.redis, ctx.keys, run.counts, finished_at=time.time(), duration_s=duration_s
        )
    except redis.RedisError as exc:  # metrics must not fail the repairs already done
        log.warning("reconcile metrics not recorded: Redis unavailable (%s)", type(exc).__name__)


def _with_lease(ctx, tenant_id: uuid.UUID, run: Pass, action) -> None:  # type: ignore[no-untyped-def]
    lease = Lease(ctx.redis, ctx.keys.tenant_lease(str(tenant_id)))
    if not lease.acquire():
        run.record(
            ReconcileAction.SKIPPED_BUSY,
            tenant_id,
            {"reason": "another worker holds the tenant's lease (an operation is acting on it)"},
        )
        return
    try:
        action(ctx, tenant_id, run)
    except Exception as exc:  # noqa: BLE001 — one tenant's trouble must not stop the others
        detail = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
        log.warning("reconcile of tenant %s failed: %s", tenant_id, detail)
        _record_failure(run, tenant_id, detail)
    finally:
        lease.release()


def _record_failure(run: Pass, tenant_id: uuid.UUID, detail: str) -> None:
    try:
        run.record(ReconcileAction.FAILED, tenant_id, {"error": detail[:_MAX_ERROR_DETAIL]})
    except Exception:  # noqa: BLE001 — e.g. the database is what failed: still counted
        log.warning("reconcile failure of tenant %s not recorded as an event", tenant_id)


def _route_drift(ctx: steps.Context, route: Route) -> dict[str, Any] | None:
    """How the published route differs from ``route`` (None: it does not). Names the fields,
    not their values: upstream addresses are the platform's business, not the tenant's."""
    wanted = route.to_json().encode()
    published = published_payloads(ctx.redis, ctx.keys, route)
    if all(value == wanted for value in published):
        return None
    present = [value for value in published if value is not None]
    if len(present) < len(published):
        return {"observed": "route missing", "desired": f"route published ({route.status})"}
    fields: set[str] = set()
    for value in present:
        fields |= route.differs_from(value)
    return {
        "observed": "route stale",
        "desired": f"route published ({route.status})",
        "fields": sorted(fields),
    }


def _ensure_route(ctx: steps.Context, tenant_id: uuid.UUID, route: Route, run: Pass) -> None:
    drift = _route_drift(ctx, route)
    if drift is not None:
        steps.publish(ctx, route)
        run.record(
            ReconcileAction.ROUTE_PUBLISHED, tenant_id, {"tenant_status": route.status, **drift}
        )


def _reconcile_active(ctx: steps.Context, tenant_id: uuid.UUID, run: Pass) -> None:
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        if tenant is None or hs is None or tenant.status is not TenantStatus.ACTIVE:
            return
        if hs.asleep_since is not None:
            # Asleep: stopped on purpose, not dead; only its (asleep) route is kept right.
            plan = repository.get_plan(session, tenant.plan_id)
            route = steps.route_for(ctx, tenant, hs, steps.target_for(ctx, tenant, plan, hs))
            asleep = True
        else:
            steps.ensure_port_usable(session, ctx, hs)
            plan = repository.get_plan(session, tenant.plan_id)
            target = steps.target_for(ctx, tenant, plan, hs)
            asleep = False
    if asleep:
        _ensure_route(ctx, tenant_id, route, run)
        return
    drift = ctx.backend.drift(target)
    was_running = ctx.backend.is_running(str(tenant_id))
    reconfigured = steps.ensure_running(ctx, target)
    if drift:
        run.record(
            ReconcileAction.HOMESERVER_REPAIRED,
            tenant_id,
            {"tenant_status": "active", "observed": "; ".join(drift), "desired": "as applied"},
        )
    if reconfigured:
        run.record(
            ReconcileAction.HOMESERVER_RECONFIGURED,
            tenant_id,
            {
                "tenant_status": "active",
                "observed": "config differs from the tenant's plan and settings",
                "desired": "config re-rendered, homeserver restarted",
            },
        )
    if not was_running:
        run.record(
            ReconcileAction.HOMESERVER_RESTARTED,
            tenant_id,
            {"tenant_status": "active", "observed": "not running", "desired": "running"},
        )
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        assert tenant is not None and hs is not None
        hs.upstream_url = ctx.backend.upstream_url(target)
        route = steps.route_for(ctx, tenant, hs, target)
    _ensure_route(ctx, tenant_id, route, run)


def _keep_stopped(ctx: steps.Context, tenant_id: uuid.UUID, run: Pass, status: str) -> None:
    """A homeserver that must not run (its tenant ``status``) is stopped if it runs, and said so."""
    if ctx.backend.is_running(str(tenant_id)):
        ctx.backend.stop(str(tenant_id))
        run.record(
            ReconcileAction.HOMESERVER_STOPPED,
            tenant_id,
            {"tenant_status": status, "observed": "running", "desired": "stopped"},
        )


def _reconcile_suspended(ctx: steps.Context, tenant_id: uuid.UUID, run: Pass) -> None:
    """A suspended tenant's homeserver stays stopped and its route says so. Read again under
    the lease first: the pass's list may predate a resume that has run since (its homeserver,
    just started, must not be stopped)."""
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        if tenant is None or hs is None or tenant.status is not TenantStatus.SUSPENDED:
            return
        plan = repository.get_plan(session, tenant.plan_id)
        route = steps.route_for(ctx, tenant, hs, steps.target_for(ctx, tenant, plan, hs))
    _keep_stopped(ctx, tenant_id, run, "suspended")
    _ensure_route(ctx, tenant_id, route, run)


def _archive_cutoff(ctx: steps.Context) -> datetime:
    """Archives made before this are past C3_ARCHIVE_RETENTION_DAYS."""
    return utcnow() - timedelta(days=ctx.settings.archive_retention_days)


def _retention_running(deleted_at: datetime | None, cutoff: datetime) -> bool:
    """A deleted tenant's archives are all made at its deletion: none is due before this."""
    return deleted_at is not None and deleted_at > cutoff


def _purge_expired_archives(
    ctx: steps.Context, tenant_id: uuid.UUID, deleted_at: datetime | None, run: Pass
) -> None:
    """Purge a deleted tenant's archives and dumps once C3_ARCHIVE_RETENTION_DAYS have passed.
    They are all made at deletion, so the store is not asked before the retention ran out, and
    not again after a pass purged them (each ask is a LIST request on S3, every pass)."""
    retention_days = ctx.settings.archive_retention_days
    cutoff = _archive_cutoff(ctx)
    if _retention_running(deleted_at, cutoff):
        return
    if ctx.redis.sismember(ctx.keys.archives_purged, str(tenant_id)):
        return
    if purged := ctx.backend.purge_archives(str(tenant_id), ctx.store, older_than=cutoff):
        run.record(
            ReconcileAction.ARCHIVE_PURGED,
            tenant_id,
            {
                "tenant_status": "deleted",
                "observed": f"{purged} archive(s) older than {retention_days:g} days",
                "desired": "archives purged after the retention period",
            },
        )
    if deleted_at is not None:  # everything it left was made before deleted_at <= cutoff
        ctx.redis.sadd(ctx.keys.archives_purged, str(tenant_id))


def _reconcile_deleted(ctx: steps.Context, tenant_id: uuid.UUID, run: Pass) -> None:
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        if tenant is None:
            return
        server_name, slug, deleted_at = tenant.server_name, tenant.slug, tenant.deleted_at
    _keep_stopped(ctx, tenant_id, run, "deleted")
    _purge_expired_archives(ctx, tenant_id, deleted_at, run)
    if is_published(ctx.redis, ctx.keys, server_name=server_name, slug=slug):
        with task_session() as session:
            tenant = repository.get_tenant(session, tenant_id)
            assert tenant is not None
            steps.withdraw(ctx, tenant)
        run.record(
            ReconcileAction.ROUTE_WITHDRAWN,
            tenant_id,
            {"tenant_status": "deleted", "observed": "route published", "desired": "no route"},
        )


def _requeue_stuck_operations(ctx: steps.Context, run: Pass) -> None:
    """Enqueue again the unfinished operations whose task was lost (a killed worker's
    unacknowledged message waits out the broker's visibility timeout; a broker restart may
    drop queued ones). A copy of a task that still exists is harmless: tasks are idempotent."""
    stuck_after = timedelta(seconds=ctx.settings.operation_stuck_after_s)
    now = utcnow()
    requeue: list[tuple[str, str]] = []
    with task_session() as session:
        for op in repository.unfinished_operations_older_than(session, now - stuck_after):
            due = operation_history.retry_due_at(op)
            if due is not None and due + stuck_after > now:
                continue  # its retry is scheduled and not overdue
            if Lease(ctx.redis, ctx.keys.tenant_lease(str(op.tenant_id))).is_held_by_anyone():
                continue
            idle_since = op.updated_at
            # Recording the requeue also moves updated_at: not again before stuck_after.
            lifecycle.requeue(op)
            requeue.append((TASK_FOR_OPERATION_KIND[op.kind.value], str(op.id)))
            run.record(
                ReconcileAction.OPERATION_REQUEUED,
                op.tenant_id,
                {
                    "operation_kind": op.kind.value,
                    "observed": f"{op.state.value} since {idle_since.isoformat()}, "
                    "no worker holding the tenant",
                    "desired": "a worker runs it",
                },
                session=session,
                target=("operation", op.id),
            )
    # After commit: a worker that picks the task up at once must not race this session's
    # write of the history.
    for task_name, op_id in requeue:
        send_task(task_name, op_id)
