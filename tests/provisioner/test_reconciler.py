"""Reconcile passes as operators and tenant admins see them: each repair (or failure, or skip)
is one audit event on its tenant saying what was observed and what was desired, and the pass
adds its counts to the platform metrics. Stand-in homeserver processes (the fake backend) on a
database and Redis namespace of this test alone: a pass acts on every tenant it finds."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Collection, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from platform_core import object_store
from platform_core.celery import celery_app
from platform_core.db import _sync_sessionmaker, sync_engine, task_session
from platform_core.metrics import ReconcileStats
from platform_core.migrate import upgrade
from platform_core.models import (
    AuditEvent,
    Operation,
    OperationKind,
    OperationState,
    Plan,
    Tenant,
    TenantStatus,
    utcnow,
)
from platform_core.routes import Route, host_field, publish_route
from platform_core.settings import get_settings
from provisioner import repository, steps
from provisioner.backends.fake import FakeBackend
from provisioner.lease import Lease
from provisioner.reconciler import reconcile_all
from tests.helpers.environment import clear_namespace, fresh_database
from tests.helpers.factories import make_tenant


def _reset_engines() -> None:
    get_settings.cache_clear()
    sync_engine().dispose()
    sync_engine.cache_clear()
    _sync_sessionmaker.cache_clear()


@pytest.fixture
def own_platform(platform_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """This test's own platform database, Redis namespace and data directory."""
    celery_app().conf.task_default_queue  # noqa: B018 — pin Celery to the session's queue
    overrides = {
        "C3_REDIS_NAMESPACE": f"{platform_env['C3_REDIS_NAMESPACE']}-rc{uuid.uuid4().hex[:6]}",
        "C3_DATA_DIR": str(tmp_path / "data"),
    }
    with fresh_database(tmp_path / "db") as database_url:
        upgrade(database_url)
        overrides["C3_DATABASE_URL"] = database_url
        saved = {name: os.environ[name] for name in overrides}
        os.environ.update(overrides)
        _reset_engines()
        try:
            yield
        finally:
            os.environ.update(saved)
            _reset_engines()
            clear_namespace(platform_env["C3_REDIS_URL"], overrides["C3_REDIS_NAMESPACE"])


def with_homeserver(ctx: steps.Context, status: TenantStatus) -> tuple[uuid.UUID, str]:
    tenant_id = make_tenant(status)
    with task_session() as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        steps.ensure_homeserver_record(session, ctx, tenant)
        return tenant_id, tenant.slug


def events(tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    with task_session() as session:
        found = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant_id)
            .order_by(AuditEvent.occurred_at)
        )
        return [
            {"actor": e.actor, "action": e.action, "target": e.target_type, **e.details}
            for e in found
        ]


def test_every_repair_is_one_event_on_its_tenant_and_counted_once(
    own_platform: None, tmp_path: Path
) -> None:
    settings = get_settings()
    ctx = steps.Context(settings, FakeBackend(settings.data_path))
    dead, _ = with_homeserver(ctx, TenantStatus.ACTIVE)  # never started: it is "dead"
    busy, _ = with_homeserver(ctx, TenantStatus.ACTIVE)
    broken, broken_slug = with_homeserver(ctx, TenantStatus.ACTIVE)
    ctx = steps.Context(settings, FakeBackend(settings.data_path, fail=[broken_slug]))
    gone = make_tenant(TenantStatus.DELETED)
    waiting = make_tenant(TenantStatus.PROVISIONING)
    with task_session() as session:
        gone_tenant = session.get(Tenant, gone)
        assert gone_tenant is not None
        route = Route(
            str(gone), gone_tenant.slug, gone_tenant.server_name, "http://x", "deleted", 1
        )
        lost = Operation(
            tenant_id=waiting,
            kind=OperationKind.PROVISION,
            state=OperationState.PENDING,
            updated_at=utcnow() - timedelta(hours=1),
        )
        session.add(lost)
    publish_route(ctx.redis, ctx.keys, route)  # a deleted tenant's route left behind
    held = Lease(ctx.redis, ctx.keys.tenant_lease(str(busy)))
    assert held.acquire()  # "another worker" is acting on this tenant
    try:
        first = reconcile_all(ctx)
        assert first == {
            "homeserver.restarted": 1,
            "route.published": 1,
            "reconcile.skipped_busy": 1,
            "reconcile.failed": 1,
            "route.withdrawn": 1,
            "operation.requeued": 1,
        }
        system = {"actor": "system:reconcile", "target": "tenant", "tenant_status": "active"}
        assert events(dead) == [
            {**system, "action": "homeserver.restarted", "observed": "not running",
             "desired": "running"},
            {**system, "action": "route.published", "observed": "route missing",
             "desired": "route published (active)"},
        ]  # fmt: skip
        # A busy tenant is counted, not an event: its operation speaks for it.
        assert events(busy) == []
        (failure,) = events(broken)
        assert failure["action"] == "reconcile.failed"
        assert "start fails" in failure["error"]
        assert [e["action"] for e in events(gone)] == ["route.withdrawn"]
        assert ctx.redis.hget(ctx.keys.routes, host_field(route.server_name)) is None
        (requeued,) = events(waiting)
        assert requeued["action"] == "operation.requeued" and requeued["target"] == "operation"
        assert requeued["operation_kind"] == "provision"

        # Nothing drifted since: a second pass repairs nothing (the busy and the broken tenant
        # are still what they were).
        assert reconcile_all(ctx) == {"reconcile.skipped_busy": 1, "reconcile.failed": 1}
        assert len(events(dead)) == 2
        # The same failure again is counted, but not written again every interval.
        assert len(events(broken)) == 1

        with task_session() as session:
            tenant = session.get(Tenant, dead)
            assert tenant is not None
            tenant.status = TenantStatus.SUSPENDED
        assert reconcile_all(ctx) == {
            "homeserver.stopped": 1,
            "route.published": 1,
            "reconcile.skipped_busy": 1,
            "reconcile.failed": 1,
        }
        stopped, republished = events(dead)[2:]
        assert stopped["action"] == "homeserver.stopped"
        assert (stopped["observed"], stopped["desired"]) == ("running", "stopped")
        assert republished["observed"] == "route stale" and republished["fields"] == ["status"]
        assert not ctx.backend.is_running(str(dead))
    finally:
        held.release()
        ctx.backend.stop_all()

    stats = ReconcileStats.from_redis(
        redis.Redis.from_url(settings.require_redis_url()).hgetall(ctx.keys.reconcile_metrics)
    )
    assert stats.runs == 3
    assert stats.actions == {
        "homeserver.restarted": 1,
        "homeserver.stopped": 1,
        "route.published": 2,
        "route.withdrawn": 1,
        "operation.requeued": 1,
        "reconcile.skipped_busy": 3,
        "reconcile.failed": 3,
    }
    assert stats.last_duration_s is not None and stats.last_duration_s > 0


def asleep(ctx: steps.Context, tenant_id: uuid.UUID, *, upstream: str | None) -> Route | None:
    """Mark the tenant's homeserver asleep (with ``upstream`` recorded); its route as recorded."""
    with task_session() as session:
        tenant = session.get(Tenant, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        assert tenant is not None and hs is not None
        hs.asleep_since = utcnow()
        hs.upstream_url = upstream
        session.flush()
        return steps.recorded_route(tenant, repository.get_plan(session, tenant.plan_id), hs)


def test_a_pass_keeps_sleepers_routes_right_and_leaves_the_rest_of_them_alone(
    own_platform: None,
) -> None:
    """Sleeping homeservers are not started; a missing or stale route of a sleeper is published
    again (an event naming what differed); a sleeper whose route is right is passed over without
    its lease, so an operation acting on it is not even a skip. A sleeper whose upstream is not
    recorded yet is looked at under its lease, as before."""
    settings = get_settings()
    ctx = steps.Context(settings, FakeBackend(settings.data_path))
    right, stale, missing, unrecorded = (
        with_homeserver(ctx, TenantStatus.ACTIVE)[0] for _ in range(4)
    )
    routes = {
        tenant_id: asleep(ctx, tenant_id, upstream=f"http://127.0.0.1:{port}")
        for tenant_id, port in ((right, 18001), (stale, 18002), (missing, 18003))
    }
    assert asleep(ctx, unrecorded, upstream=None) is None
    right_route, stale_route = routes[right], routes[stale]
    assert right_route is not None and stale_route is not None and right_route.asleep
    publish_route(ctx.redis, ctx.keys, right_route)
    publish_route(ctx.redis, ctx.keys, replace(stale_route, rate_burst=stale_route.rate_burst + 1))
    held = [Lease(ctx.redis, ctx.keys.tenant_lease(str(t))) for t in (right, unrecorded)]
    assert all(lease.acquire() for lease in held)  # operations are acting on these two
    try:
        assert reconcile_all(ctx) == {"route.published": 2, "reconcile.skipped_busy": 1}
    finally:
        for lease in held:
            lease.release()
    assert events(right) == [] and events(unrecorded) == []
    (republished,) = events(stale)
    assert republished["observed"] == "route stale" and republished["fields"] == ["rate_burst"]
    assert [e["observed"] for e in events(missing)] == ["route missing"]
    for tenant_id, route in routes.items():
        assert route is not None
        assert ctx.redis.hget(ctx.keys.routes, host_field(route.server_name)) == (
            route.to_json().encode()
        )
        assert not ctx.backend.is_running(str(tenant_id))
    # Now nothing is left to do: the unrecorded one gets its route under its lease.
    assert reconcile_all(ctx) == {"route.published": 1}
    assert not ctx.backend.is_running(str(unrecorded))
    assert reconcile_all(ctx) == {}


def test_a_config_that_drifted_is_rendered_again_and_said_so(own_platform: None) -> None:
    """A plan whose limits were edited reaches its running homeservers through reconcile: the
    restart is an event and a metric, not a silent bounce."""
    settings = get_settings()
    ctx = steps.Context(settings, FakeBackend(settings.data_path))
    tenant_id, _ = with_homeserver(ctx, TenantStatus.ACTIVE)
    try:
        assert reconcile_all(ctx)["homeserver.restarted"] == 1
        with task_session() as session:
            tenant = session.get(Tenant, tenant_id)
            assert tenant is not None
            plan = session.get(Plan, tenant.plan_id)
            assert plan is not None
            before = dict(plan.limits or {})
            plan.limits = {**before, "rc_message_burst": 999}
        try:
            assert reconcile_all(ctx) == {"homeserver.reconfigured": 1}
        finally:
            with task_session() as session:
                plan = session.get(Plan, tenant.plan_id)
                assert plan is not None
                plan.limits = before
        reconfigured = events(tenant_id)[-1]
        assert reconfigured["action"] == "homeserver.reconfigured"
        assert ctx.backend.is_running(str(tenant_id))
        config = ctx.backend._config_path(str(tenant_id)).read_text()
        assert '"rc_message_burst": 999' in config
    finally:
        ctx.backend.stop_all()


def test_archives_are_purged_once_their_retention_ran_out(own_platform: None) -> None:
    """A deleted tenant's archives go after C3_ARCHIVE_RETENTION_DAYS (30), and not before;
    once purged, the store is not asked again for that tenant."""
    settings = get_settings()
    ctx = steps.Context(settings, FakeBackend(settings.data_path))
    long_ago = make_tenant(TenantStatus.DELETED)
    recently = make_tenant(TenantStatus.DELETED)
    old = (utcnow() - timedelta(days=45)).timestamp()
    with task_session() as session:
        for tenant_id, days in ((long_ago, 40), (recently, 2)):
            tenant = session.get(Tenant, tenant_id)
            assert tenant is not None
            tenant.deleted_at = utcnow() - timedelta(days=days)
    for tenant_id in (long_ago, recently):
        for suffix in (".tar.gz", ".pgdump"):
            key = object_store.archive_key(str(tenant_id), suffix)
            ctx.store.put_stream(key, io.BytesIO(b"archived"))
            os.utime(ctx.store.path(key), (old, old))  # as if made 45 days ago

    assert reconcile_all(ctx).get("archive.purged") == 1
    assert ctx.store.list(object_store.archive_prefix(str(long_ago))) == []
    (purged,) = [e for e in events(long_ago) if e["action"] == "archive.purged"]
    assert purged["observed"] == "2 archive(s) older than 30 days"
    # Deleted two days ago: its archives stay (whatever their files' age says).
    assert len(ctx.store.list(object_store.archive_prefix(str(recently)))) == 2

    # An archive that appeared later for the purged tenant is no longer looked for.
    ctx.store.put_stream(object_store.archive_key(str(long_ago), ".tar.gz"), io.BytesIO(b"x"))
    assert "archive.purged" not in reconcile_all(ctx)


def test_deleted_tenants_with_nothing_left_to_do_are_passed_over(own_platform: None) -> None:
    """A deleted tenant whose homeserver is stopped, whose archives are purged (or not due)
    and whose route is gone is passed over without its lease; one whose route was left
    behind, or whose homeserver runs again, is still set right."""
    settings = get_settings()
    ctx = steps.Context(settings, FakeBackend(settings.data_path))
    settled = make_tenant(TenantStatus.DELETED)
    routed, running = (with_homeserver(ctx, TenantStatus.ACTIVE)[0] for _ in range(2))
    with task_session() as session:
        for tenant_id in (settled, routed, running):
            tenant = session.get(Tenant, tenant_id)
            assert tenant is not None
            tenant.status = TenantStatus.DELETED
            tenant.deleted_at = utcnow() - timedelta(days=1)  # archives kept 30 days
            if tenant_id == routed:
                left = Route(
                    str(tenant_id), tenant.slug, tenant.server_name, "http://x", "deleted", 1
                )
            if tenant_id == running:
                hs = repository.get_homeserver(session, tenant_id)
                assert hs is not None
                target = steps.target_for(
                    ctx, tenant, repository.get_plan(session, tenant.plan_id), hs
                )
    publish_route(ctx.redis, ctx.keys, left)
    ctx.backend.render(target)
    ctx.backend.start(target)
    held = Lease(ctx.redis, ctx.keys.tenant_lease(str(settled)))
    assert held.acquire()  # an operation is acting on it: a pass does not even look
    try:
        assert reconcile_all(ctx) == {"route.withdrawn": 1, "homeserver.stopped": 1}
        assert reconcile_all(ctx) == {}
    finally:
        held.release()
        ctx.backend.stop_all()
    assert events(settled) == []
    assert [e["action"] for e in events(routed)] == ["route.withdrawn"]
    assert [e["action"] for e in events(running)] == ["homeserver.stopped"]
    assert not ctx.backend.is_running(str(running))
    assert ctx.redis.hget(ctx.keys.routes, host_field(left.server_name)) is None


def test_a_deleted_tenant_the_backend_cannot_tell_about_fails_alone(own_platform: None) -> None:
    """A backend error while asking after one deleted tenant is that tenant's failure (an
    event), and the pass goes on with the others."""
    settings = get_settings()
    troubled, fine = make_tenant(TenantStatus.DELETED), make_tenant(TenantStatus.DELETED)

    class Troubled(FakeBackend):
        def is_running(self, tenant_id: str) -> bool:
            if tenant_id == str(troubled):
                raise RuntimeError("the cluster did not answer")
            return super().is_running(tenant_id)

    ctx = steps.Context(settings, Troubled(settings.data_path))
    with task_session() as session:
        tenant = session.get(Tenant, fine)
        assert tenant is not None
        left = Route(str(fine), tenant.slug, tenant.server_name, "http://x", "deleted", 1)
    publish_route(ctx.redis, ctx.keys, left)
    assert reconcile_all(ctx) == {"reconcile.failed": 1, "route.withdrawn": 1}
    (failure,) = events(troubled)
    assert failure["action"] == "reconcile.failed"
    assert "the cluster did not answer" in failure["error"]


def test_suspended_tenants_stopped_with_their_route_right_are_passed_over(
    own_platform: None,
) -> None:
    """A suspended tenant whose homeserver is stopped and whose route is right is passed over
    without its lease; one whose homeserver runs again is stopped. The backend is asked after
    all of them at once (on Kubernetes two list calls), not after each."""
    settings = get_settings()
    asked: list[set[str]] = []

    class Counting(FakeBackend):
        def running_among(self, tenant_ids: Collection[str]) -> set[str]:
            asked.append(set(tenant_ids))
            return super().running_among(tenant_ids)

    ctx = steps.Context(settings, Counting(settings.data_path))
    quiet, restarted = (with_homeserver(ctx, TenantStatus.ACTIVE)[0] for _ in range(2))
    targets = {}
    with task_session() as session:
        for tenant_id, port in ((quiet, 18011), (restarted, 18012)):
            tenant = session.get(Tenant, tenant_id)
            hs = repository.get_homeserver(session, tenant_id)
            assert tenant is not None and hs is not None
            tenant.status = TenantStatus.SUSPENDED
            hs.upstream_url = f"http://127.0.0.1:{port}"
            plan = repository.get_plan(session, tenant.plan_id)
            route = steps.recorded_route(tenant, plan, hs)
            assert route is not None and route.status == "suspended"
            publish_route(ctx.redis, ctx.keys, route)
            targets[tenant_id] = steps.target_for(ctx, tenant, plan, hs)
    ctx.backend.render(targets[restarted])
    ctx.backend.start(targets[restarted])  # someone started it again
    held = Lease(ctx.redis, ctx.keys.tenant_lease(str(quiet)))
    assert held.acquire()  # an operation is acting on the quiet one: not even a skip
    try:
        assert reconcile_all(ctx) == {"homeserver.stopped": 1}
        assert reconcile_all(ctx) == {}
    finally:
        held.release()
        ctx.backend.stop_all()
    assert events(quiet) == []
    assert [e["action"] for e in events(restarted)] == ["homeserver.stopped"]
    assert not ctx.backend.is_running(str(restarted))
    assert asked == [{str(quiet), str(restarted)}] * 2  # once a pass, for both


def test_a_tenant_resumed_after_the_pass_listed_it_keeps_its_homeserver(
    own_platform: None,
) -> None:
    """The pass lists the suspended tenants, then takes each one's lease: a resume that ran in
    between (its lease taken and given back, the homeserver started, the tenant active) must
    not have its homeserver stopped by a pass that still counts it as suspended."""
    settings = get_settings()
    resumed: list[uuid.UUID] = []

    class ResumedMeanwhile(FakeBackend):
        def running_among(self, tenant_ids: Collection[str]) -> set[str]:
            for tenant_id in resumed:  # the resume commits after the pass read its list
                with task_session() as session:
                    tenant = session.get(Tenant, tenant_id)
                    assert tenant is not None
                    tenant.status = TenantStatus.ACTIVE
            return super().running_among(tenant_ids)

    ctx = steps.Context(settings, ResumedMeanwhile(settings.data_path))
    tenant_id = with_homeserver(ctx, TenantStatus.ACTIVE)[0]
    with task_session() as session:
        tenant = session.get(Tenant, tenant_id)
        hs = repository.get_homeserver(session, tenant_id)
        assert tenant is not None and hs is not None
        tenant.status = TenantStatus.SUSPENDED
        hs.upstream_url = "http://127.0.0.1:18013"
        plan = repository.get_plan(session, tenant.plan_id)
        route = steps.recorded_route(tenant, plan, hs)
        assert route is not None and route.status == "suspended"
        publish_route(ctx.redis, ctx.keys, route)  # as the suspension left it
        target = steps.target_for(ctx, tenant, plan, hs)
    ctx.backend.render(target)
    ctx.backend.start(target)  # the resume's start
    resumed.append(tenant_id)
    try:
        assert reconcile_all(ctx) == {}
        assert ctx.backend.is_running(str(tenant_id))
    finally:
        ctx.backend.stop_all()
    assert events(tenant_id) == []
