"""Reconcile: make observed homeserver state match desired state, and repair drift.

Runs at start-up and periodically (beat). For each tenant it takes the tenant's lease (skipping
tenants another worker is acting on): an active tenant's homeserver is (re)started and its route
re-published if missing or stale (and its config re-rendered from its plan: a changed config
restarts it); a suspended tenant's homeserver is kept stopped; a deleted tenant's homeserver is
stopped and its route withdrawn; an operation stuck in pending/running with nobody holding its lease is re-enqueued.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from datetime import timedelta

from platform_core.celery import TASK_FOR_OPERATION_KIND, send_task
from platform_core.db import task_session
from platform_core.models import TenantStatus, utcnow
from platform_core.routes import host_field, slug_field
from provisioner import repository, steps
from provisioner.lease import Lease

log = logging.getLogger(__name__)

STUCK_AFTER = timedelta(seconds=60)


def reconcile_all(ctx: steps.Context) -> dict[str, int]:
    report: Counter[str] = Counter()
    with task_session() as session:
        active = [t.id for t in repository.tenants_with_status(session, [TenantStatus.ACTIVE])]
        deleted = [t.id for t in repository.tenants_with_status(session, [TenantStatus.DELETED])]
        suspended = [
            t.id for t in repository.tenants_with_status(session, [TenantStatus.SUSPENDED])
        ]
    for tenant_id in active:
        _with_lease(ctx, tenant_id, report, _reconcile_active)
    for tenant_id in suspended:
        _with_lease(ctx, tenant_id, report, _reconcile_suspended)
    for tenant_id in deleted:
        _with_lease(ctx, tenant_id, report, _reconcile_deleted)
    _requeue_stuck_operations(ctx, report)
    if report:
        log.info("reconcile: %s", dict(report))
    return dict(report)


def _with_lease(ctx, tenant_id: uuid.UUID, report: Counter[str], action) -> None:  # type: ignore[no-untyped-def]
    lease = Lease(ctx.redis, ctx.keys.tenant_lease(str(tenant_id)))
    if not lease.acquire():
        report["skipped_busy"] += 1
        return
    try:
        action(ctx, tenant_id, report)
    except Exception as exc:  # noqa: BLE001 — one tenant's trouble must not stop the others
        detail = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
        log.warning("reconcile of tenant %s failed: %s", tenant_id, detail)
        report["errors"] += 1
    finally:
        lease.release()


def _reconcile_active(ctx: steps.Context, tenant_id: uuid.UUID, report: Counter[str]) -> None:
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        if tenant is None or hs is None or tenant.status is not TenantStatus.ACTIVE:
            return
        steps.ensure_port_usable(session, ctx, hs)
        plan = repository.get_plan(session, tenant.plan_id)
        target = steps.target_for(ctx, tenant, plan, hs)
    was_running = ctx.backend.is_running(str(tenant_id))
    steps.ensure_running(ctx, target)
    if not was_running:
        report["homeservers_restarted"] += 1
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        assert tenant is not None and hs is not None
        hs.upstream_url = ctx.backend.upstream_url(target)
        route = steps.route_for(ctx, tenant, hs, target)
    published = [ctx.redis.hget(ctx.keys.routes, f) for f in route.fields()]
    wanted = route.to_json().encode()
    if any(value != wanted for value in published):
        steps.publish(ctx, route)
        report["routes_published"] += 1


def _reconcile_suspended(ctx: steps.Context, tenant_id: uuid.UUID, report: Counter[str]) -> None:
    """A suspended tenant's homeserver stays stopped and its route says so."""
    if ctx.backend.is_running(str(tenant_id)):
        ctx.backend.stop(str(tenant_id))
        report["homeservers_stopped"] += 1
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        if tenant is None or hs is None or tenant.status is not TenantStatus.SUSPENDED:
            return
        plan = repository.get_plan(session, tenant.plan_id)
        route = steps.route_for(ctx, tenant, hs, steps.target_for(ctx, tenant, plan, hs))
    published = [ctx.redis.hget(ctx.keys.routes, f) for f in route.fields()]
    if any(value != route.to_json().encode() for value in published):
        steps.publish(ctx, route)
        report["routes_published"] += 1


def _reconcile_deleted(ctx: steps.Context, tenant_id: uuid.UUID, report: Counter[str]) -> None:
    with task_session() as session:
        tenant = repository.get_tenant(session, tenant_id)
        if tenant is None:
            return
        server_name, slug = tenant.server_name, tenant.slug
    if ctx.backend.is_running(str(tenant_id)):
        ctx.backend.stop(str(tenant_id))
        report["homeservers_stopped"] += 1
    retention = timedelta(days=ctx.settings.archive_retention_days)
    if ctx.backend.purge_archives(str(tenant_id), older_than=utcnow() - retention):
        report["archives_purged"] += 1
    if ctx.redis.hexists(ctx.keys.routes, host_field(server_name)) or ctx.redis.hexists(
        ctx.keys.routes, slug_field(slug)
    ):
        with task_session() as session:
            tenant = repository.get_tenant(session, tenant_id)
            assert tenant is not None
            steps.withdraw(ctx, tenant)
        report["routes_withdrawn"] += 1


def _requeue_stuck_operations(ctx: steps.Context, report: Counter[str]) -> None:
    with task_session() as session:
        stuck = repository.unfinished_operations_older_than(session, utcnow() - STUCK_AFTER)
        for op in stuck:
            if Lease(ctx.redis, ctx.keys.tenant_lease(str(op.tenant_id))).is_held_by_anyone():
                continue
            op.updated_at = utcnow()  # not again before STUCK_AFTER passes
            send_task(TASK_FOR_OPERATION_KIND[op.kind.value], str(op.id))
            report["operations_requeued"] += 1
