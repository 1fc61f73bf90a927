"""Celery tasks of the provisioner: tenant lifecycle operations and the reconcile loop.

Tasks carry operation ids only, re-read their rows, hold the tenant's lease while they act and
run idempotent steps (``provisioner.steps``), so a redelivered or duplicated task is harmless.
A ``TemporaryError`` (or anything unexpected) retries with capped, jittered backoff; a
``PermanentError`` or too many attempts ends the operation in ``failed`` with the error kept.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable

import redis
from celery import Task
from celery.signals import worker_ready
from sqlalchemy.orm import Session

from platform_core import operation_history as history
from platform_core.celery import TaskNames, celery_app
from platform_core.db import task_session
from platform_core.errors import PermanentError
from platform_core.models import (
    Homeserver,
    HomeserverDesiredState,
    Operation,
    OperationKind,
    OperationState,
    Tenant,
    TenantStatus,
    utcnow,
)
from platform_core.operation_history import OperationEvent
from platform_core.settings import Settings
from provisioner import exports, repository, steps, tenant_databases
from provisioner.backends.base import HomeserverTarget
from provisioner.lease import Lease
from provisioner.reconciler import reconcile_all
from provisioner.usage_reconciliation import reconcile_usage_all

log = logging.getLogger(__name__)
app = celery_app()


class Superseded(Exception):
    """The tenant moved on (e.g. deleted while provisioning): stop without failing it."""


def backoff_seconds(attempt: int, settings: Settings) -> float:
    """Delay after failed attempt ``attempt``: base·2^(attempt−1), capped, less up to a quarter
    of jitter — it grows at least 1.5× per attempt until the cap and never passes the cap; the
    jitter keeps tenants that failed together from retrying together."""
    ceiling = min(
        settings.operation_retry_cap_s, settings.operation_retry_base_s * 2.0 ** (attempt - 1)
    )
    return ceiling * random.uniform(0.75, 1.0)


def _record_step(operation_id: uuid.UUID, step: str) -> None:
    with task_session() as session:
        op = repository.get_operation(session, operation_id)
        if op is None:
            return
        if step not in op.steps_done:
            op.steps_done = [*op.steps_done, step]
        history.record(op, OperationEvent.STEP, step=step)


def run_operation(
    task: Task, operation_id: str, body: Callable[[steps.Context, uuid.UUID, Lease], None]
) -> None:
    op_id = uuid.UUID(operation_id)
    ctx = steps.context()
    settings = ctx.settings
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        if op is None:
            log.error("operation %s does not exist; dropping task", op_id)
            return
        if op.state in (OperationState.SUCCEEDED, OperationState.FAILED):
            return  # delivered again after it finished
        tenant_id = op.tenant_id
        due = history.retry_due_at(op)
    early_s = (due - utcnow()).total_seconds() if due is not None else 0.0
    if early_s > 0:
        # A second copy of the task (reconcile's, or a redelivery) ahead of the scheduled
        # retry: come back when it is due, so copies never shorten the backoff.
        raise task.retry(countdown=early_s, max_retries=None)

    lease = Lease(
        ctx.redis, ctx.keys.tenant_lease(str(tenant_id)), ttl_s=settings.operation_lease_ttl_s
    )
    if not lease.acquire():
        # Another worker acts on this tenant right now; come back shortly (not an attempt).
        raise task.retry(countdown=random.uniform(1.0, 3.0), max_retries=None)
    try:
        attempt = _begin_attempt(op_id, settings.operation_max_attempts)
        if attempt is None:
            return
        try:
            with lease.kept_alive():
                body(ctx, op_id, lease)
        except Superseded as exc:
            _finish(op_id, OperationState.FAILED, error=str(exc))
            return
        except PermanentError as exc:
            _fail(op_id, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 — anything unexpected is retried, then fails
            detail = exc.detail if hasattr(exc, "detail") else f"{type(exc).__name__}: {exc}"
            log.warning("operation %s attempt %d failed: %s", op_id, attempt, detail)
            if attempt >= settings.operation_max_attempts:
                _fail(op_id, f"gave up after {attempt} attempts: {detail}")
                return
            delay = backoff_seconds(attempt, settings)
            _schedule_retry(op_id, detail, delay)
            raise task.retry(countdown=delay, max_retries=None) from None
        _finish(op_id, OperationState.SUCCEEDED)
        log.info("operation %s (%s of tenant %s) succeeded", op_id, body.__name__, tenant_id)
    finally:
        _release(lease)


def _begin_attempt(op_id: uuid.UUID, max_attempts: int) -> int | None:
    """Start the next attempt under the lease; its number, or None if there is nothing to do.

    An attempt that was started but never ended means its worker died (kill -9, OOM): that
    counts as a failed attempt, so a task that kills its worker every time ends ``failed``
    after ``max_attempts`` instead of being redelivered forever."""
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        assert op is not None
        if op.state in (OperationState.SUCCEEDED, OperationState.FAILED):
            return None  # another copy of the task finished it while this one waited
        if op.state is OperationState.RUNNING and history.attempt_in_progress(op):
            detail = f"attempt {op.attempts} was interrupted: the worker running it died"
            history.record(op, OperationEvent.INTERRUPTED, detail=detail)
            op.last_error = detail
            if op.attempts >= max_attempts:
                _fail_operation(session, op, f"gave up after {op.attempts} attempts: {detail}")
                return None
        op.state = OperationState.RUNNING
        op.attempts += 1
        op.started_at = op.started_at or utcnow()
        history.record(op, OperationEvent.ATTEMPT)
        return op.attempts


def _schedule_retry(op_id: uuid.UUID, error: str, delay_s: float) -> None:
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        assert op is not None
        op.last_error = error
        history.record(op, OperationEvent.RETRY, detail=error, delay_s=delay_s)


def _release(lease: Lease) -> None:
    """Best effort: with Redis away the lease cannot be released, and it expires by itself."""
    try:
        lease.release()
    except redis.RedisError as exc:
        log.warning("tenant lease not released (%s); it expires by itself", type(exc).__name__)


def _finish(op_id: uuid.UUID, state: OperationState, *, error: str | None = None) -> None:
    """End the operation: ``succeeded``, or ``failed`` because its tenant moved on."""
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        assert op is not None
        op.state = state
        op.finished_at = utcnow()
        if error is not None:
            op.last_error = error
        if state is OperationState.SUCCEEDED:
            history.record(op, OperationEvent.SUCCEEDED)
        else:
            history.record(op, OperationEvent.SUPERSEDED, detail=error)


def _fail(op_id: uuid.UUID, error: str) -> None:
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        assert op is not None
        _fail_operation(session, op, error)


def _fail_operation(session: Session, op: Operation, error: str) -> None:
    """``failed`` with the error kept; a tenant it was creating or deleting fails with it."""
    log.error("operation %s failed: %s", op.id, error)
    op.state = OperationState.FAILED
    op.finished_at = utcnow()
    op.last_error = error
    history.record(op, OperationEvent.FAILED, detail=error)
    tenant = repository.get_tenant(session, op.tenant_id)
    if tenant is not None and op.kind is OperationKind.PROVISION:
        if tenant.status is TenantStatus.PROVISIONING:
            tenant.status = TenantStatus.FAILED
    elif tenant is not None and op.kind is OperationKind.DEPROVISION:
        if tenant.status is TenantStatus.DELETING:
            tenant.status = TenantStatus.FAILED


# Provision ----------------------------------------------------------------------------


def provision(ctx: steps.Context, op_id: uuid.UUID, lease: Lease) -> None:
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        assert op is not None
        tenant = repository.get_tenant(session, op.tenant_id)
        assert tenant is not None
        if tenant.status in (TenantStatus.DELETING, TenantStatus.DELETED):
            raise Superseded("tenant was deleted before provisioning finished")
        if tenant.status is TenantStatus.FAILED:
            tenant.status = TenantStatus.PROVISIONING  # an operator retried it
        hs = steps.ensure_homeserver_record(session, ctx, tenant)
        steps.ensure_port_usable(session, ctx, hs)
        plan = repository.get_plan(session, tenant.plan_id)
        target = steps.target_for(ctx, tenant, plan, hs)
        database_name = hs.database_name
    _record_step(op_id, "homeserver-record")

    if database_name is not None:
        tenant_databases.ensure_ready(ctx.settings, database_name, target.secrets)
        _record_step(op_id, "database-ready")

    steps.ensure_running(ctx, target)
    _record_step(op_id, "homeserver-running")
    lease.renew()

    with task_session() as session:
        tenant, hs = _tenant_and_homeserver(session, uuid.UUID(target.tenant_id))
        steps.ensure_admin(ctx, tenant, hs, target)
    _record_step(op_id, "admin-registered")

    with task_session() as session:
        tenant, hs = _tenant_and_homeserver(session, uuid.UUID(target.tenant_id))
        if tenant.status in (TenantStatus.DELETING, TenantStatus.DELETED):
            raise Superseded("tenant was deleted before provisioning finished")
        hs.upstream_url = ctx.backend.upstream_url(target)
        tenant.status = TenantStatus.ACTIVE
        steps.publish(ctx, steps.route_for(ctx, tenant, hs, target))
    _record_step(op_id, "route-published")


def _tenant_and_homeserver(session: Session, tenant_id: uuid.UUID) -> tuple[Tenant, Homeserver]:
    tenant = repository.get_tenant(session, tenant_id)
    hs = repository.get_homeserver(session, tenant_id)
    if tenant is None or hs is None:
        raise PermanentError(f"tenant {tenant_id} or its homeserver record disappeared")
    return tenant, hs


# Deprovision --------------------------------------------------------------------------


def deprovision(ctx: steps.Context, op_id: uuid.UUID, lease: Lease) -> None:
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        assert op is not None
        tenant = repository.get_tenant(session, op.tenant_id)
        assert tenant is not None
        tenant.status = TenantStatus.DELETING
        hs = repository.get_homeserver(session, tenant.id)
        if hs is not None:
            hs.desired_state = HomeserverDesiredState.STOPPED
        steps.withdraw(ctx, tenant)
        tenant_id = str(tenant.id)
        database_name = hs.database_name if hs is not None else None
        purge = bool((op.params or {}).get("purge"))
    _record_step(op_id, "route-withdrawn")

    ctx.backend.stop(tenant_id)
    _record_step(op_id, "homeserver-stopped")

    if database_name is not None:
        # Beside the local backend's data archives: retention and ?purge=true remove it too.
        archive_dir = ctx.settings.data_path / "archive"
        dump = tenant_databases.retire(
            ctx.settings, database_name, tenant_id, archive_dir, keep=not purge
        )
        if dump is not None:
            _record_step(op_id, f"database-archived:{dump}")
        _record_step(op_id, "database-dropped")

    archived = ctx.backend.archive(tenant_id)
    _record_step(op_id, f"data-archived:{archived}" if archived else "data-archived")
    if purge:
        ctx.backend.purge_archives(tenant_id)
        _record_step(op_id, "data-purged")

    with task_session() as session:
        tenant = repository.get_tenant(session, uuid.UUID(tenant_id))
        assert tenant is not None
        tenant.status = TenantStatus.DELETED
        tenant.deleted_at = utcnow()


# Suspend, resume, reconfigure ---------------------------------------------------------


def _target(
    session: Session, ctx: steps.Context, tenant: Tenant, hs: Homeserver
) -> HomeserverTarget:
    plan = repository.get_plan(session, tenant.plan_id)
    return steps.target_for(ctx, tenant, plan, hs)


def suspend(ctx: steps.Context, op_id: uuid.UUID, lease: Lease) -> None:
    """Proxy first (clients get a clear error at once), then the homeserver stops; data kept."""
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        assert op is not None
        tenant, hs = _tenant_and_homeserver(session, op.tenant_id)
        if tenant.status not in (TenantStatus.ACTIVE, TenantStatus.SUSPENDED):
            raise PermanentError(f"a {tenant.status.value} tenant cannot be suspended")
        tenant.status = TenantStatus.SUSPENDED
        hs.desired_state = HomeserverDesiredState.STOPPED
        target = _target(session, ctx, tenant, hs)
        steps.publish(ctx, steps.route_for(ctx, tenant, hs, target))
        tenant_id = str(tenant.id)
    _record_step(op_id, "route-suspended")
    ctx.backend.stop(tenant_id)
    _record_step(op_id, "homeserver-stopped")


def resume(ctx: steps.Context, op_id: uuid.UUID, lease: Lease) -> None:
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        assert op is not None
        tenant, hs = _tenant_and_homeserver(session, op.tenant_id)
        if tenant.status not in (TenantStatus.SUSPENDED, TenantStatus.ACTIVE):
            raise PermanentError(f"a {tenant.status.value} tenant cannot be resumed")
        hs.desired_state = HomeserverDesiredState.RUNNING
        steps.ensure_port_usable(session, ctx, hs)
        target = _target(session, ctx, tenant, hs)
    steps.ensure_running(ctx, target)
    _record_step(op_id, "homeserver-running")
    with task_session() as session:
        tenant, hs = _tenant_and_homeserver(session, uuid.UUID(target.tenant_id))
        tenant.status = TenantStatus.ACTIVE
        hs.upstream_url = ctx.backend.upstream_url(target)
        steps.publish(ctx, steps.route_for(ctx, tenant, hs, target))
    _record_step(op_id, "route-published")


def reconfigure(ctx: steps.Context, op_id: uuid.UUID, lease: Lease) -> None:
    """Render the homeserver's config from the tenant's current plan; restart it only if the
    config changed (clients ride the restart out: the proxy answers 502 + Retry-After and
    Matrix clients retry). A suspended tenant's new config applies when it resumes."""
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        assert op is not None
        tenant, hs = _tenant_and_homeserver(session, op.tenant_id)
        if tenant.status is not TenantStatus.ACTIVE:
            if tenant.status is TenantStatus.SUSPENDED:
                return
            raise PermanentError(f"a {tenant.status.value} tenant cannot be reconfigured")
        target = _target(session, ctx, tenant, hs)
    steps.ensure_running(ctx, target)
    _record_step(op_id, "config-applied")
    with task_session() as session:
        tenant, hs = _tenant_and_homeserver(session, uuid.UUID(target.tenant_id))
        steps.publish(ctx, steps.route_for(ctx, tenant, hs, target))
    _record_step(op_id, "route-published")


@app.task(name=TaskNames.SUSPEND_TENANT, bind=True, acks_late=True)
def suspend_tenant(self: Task, operation_id: str) -> None:
    run_operation(self, operation_id, suspend)


@app.task(name=TaskNames.RESUME_TENANT, bind=True, acks_late=True)
def resume_tenant(self: Task, operation_id: str) -> None:
    run_operation(self, operation_id, resume)


@app.task(name=TaskNames.RECONFIGURE_TENANT, bind=True, acks_late=True)
def reconfigure_tenant(self: Task, operation_id: str) -> None:
    run_operation(self, operation_id, reconfigure)


@app.task(name=TaskNames.EXPORT_TENANT, bind=True, acks_late=True)
def export_tenant(self: Task, operation_id: str) -> None:
    run_operation(self, operation_id, exports.export)


@app.task(name=TaskNames.EXPIRE_EXPORTS, acks_late=True)
def expire_exports() -> dict[str, int]:
    return exports.expire_exports(steps.context().settings)


@app.task(name=TaskNames.PROVISION_TENANT, bind=True, acks_late=True)
def provision_tenant(self: Task, operation_id: str) -> None:
    run_operation(self, operation_id, provision)


@app.task(name=TaskNames.DEPROVISION_TENANT, bind=True, acks_late=True)
def deprovision_tenant(self: Task, operation_id: str) -> None:
    run_operation(self, operation_id, deprovision)


@app.task(name=TaskNames.RECONCILE, acks_late=True)
def reconcile() -> dict[str, int]:
    return reconcile_all(steps.context())


@worker_ready.connect
def _reconcile_on_start(**_: object) -> None:
    """Reconcile as soon as a worker is up (beat's first run comes only an interval later): a
    platform restarted after an outage repairs at once what drifted meanwhile."""
    app.send_task(TaskNames.RECONCILE)


@app.task(name=TaskNames.RECONCILE_USAGE, acks_late=True)
def reconcile_usage() -> dict[str, int]:
    return reconcile_usage_all(steps.context())
