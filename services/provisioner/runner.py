"""Runs one lifecycle operation: under the tenant's lease, one attempt of its body, and the
outcome as a lifecycle transition (``platform_core.lifecycle``).

Tasks carry operation ids only, re-read their rows, hold the tenant's lease while they act and
run idempotent steps (``provisioner.steps``), so a redelivered or duplicated task is harmless.
The exception type decides what follows a failed attempt (``lifecycle.outcome_of``): a
``TemporaryError`` (or anything unexpected) retries with capped, jittered backoff; a
``PermanentError`` or too many attempts ends the operation in ``failed`` with the error kept;
``Superseded`` ends it because its tenant moved on.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable

import redis
from celery import Task
from sqlalchemy.exc import SQLAlchemyError

from platform_core import lifecycle, metrics
from platform_core import operation_history as history
from platform_core.db import task_session
from platform_core.lifecycle import Outcome
from platform_core.logging import tenant_id_var
from platform_core.models import Operation, OperationState, utcnow
from platform_core.settings import Settings
from provisioner import repository, steps
from provisioner.lease import Lease
from provisioner.operations.common import Body

log = logging.getLogger(__name__)


def backoff_seconds(attempt: int, settings: Settings) -> float:
    """Delay after failed attempt ``attempt``: base·2^(attempt−1), capped, less up to a quarter
    of jitter — it grows at least 1.5× per attempt until the cap and never passes the cap; the
    jitter keeps tenants that failed together from retrying together."""
    ceiling = min(
        settings.operation_retry_cap_s, settings.operation_retry_base_s * 2.0 ** (attempt - 1)
    )
    return ceiling * random.uniform(0.75, 1.0)


def run_operation(task: Task, operation_id: str, body: Body) -> None:
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
    tenant_id_var.set(str(tenant_id))  # this task's log lines name the tenant (task_postrun resets)
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
        began = time.monotonic()
        try:
            with lease.kept_alive():
                body(ctx, op_id, lease)
        except Exception as exc:  # noqa: BLE001 — the exception's type decides what follows
            outcome, delay = _after_failed_attempt(op_id, attempt, exc, settings)
            _measure(ctx, body, outcome, time.monotonic() - began, op_id)
            if delay is None:
                return
            raise task.retry(countdown=delay, max_retries=None) from None
        _transition(op_id, lifecycle.succeed)
        _measure(ctx, body, "succeeded", time.monotonic() - began, None)
        log.info("operation %s (%s of tenant %s) succeeded", op_id, body.__name__, tenant_id)
    finally:
        _release(lease)


def _after_failed_attempt(
    op_id: uuid.UUID, attempt: int, exc: Exception, settings: Settings
) -> tuple[str, float | None]:
    """Record what the failed attempt leads to; that outcome (a ``metrics.OPERATION_OUTCOMES``
    name) and the delay before the next attempt, if any."""
    outcome = lifecycle.outcome_of(exc)
    if outcome is Outcome.SUPERSEDE:
        _transition(op_id, lambda op: lifecycle.supersede(op, str(exc)))
        return "superseded", None
    if outcome is Outcome.FAIL:
        _fail(op_id, str(exc))
        return "failed", None
    detail = exc.detail if hasattr(exc, "detail") else f"{type(exc).__name__}: {exc}"
    log.warning("operation %s attempt %d failed: %s", op_id, attempt, detail)
    if attempt >= settings.operation_max_attempts:
        _fail(op_id, f"gave up after {attempt} attempts: {detail}")
        return "failed", None
    delay = backoff_seconds(attempt, settings)
    _transition(op_id, lambda op: lifecycle.schedule_retry(op, detail, delay))
    return "retried", delay


def _measure(
    ctx: steps.Context, body: Body, outcome: str, duration_s: float, failed: uuid.UUID | None
) -> None:
    """Count the attempt in the operation metrics (``failed``: the operation whose attempt
    failed, to name the last step it completed). Best effort: metrics never fail an operation."""
    try:
        last_step = None
        if failed is not None:
            with task_session() as session:
                op = repository.get_operation(session, failed)
                last_step = op.steps_done[-1] if op is not None and op.steps_done else None
        metrics.record_operation_attempt(
            ctx.redis,
            ctx.keys,
            kind=body.__name__,
            outcome=outcome,
            duration_s=duration_s,
            failed_after_step=last_step,
        )
    except (redis.RedisError, SQLAlchemyError, OSError) as exc:
        log.warning("operation metrics not recorded (%s)", type(exc).__name__)


def _begin_attempt(op_id: uuid.UUID, max_attempts: int) -> int | None:
    """Start the next attempt under the lease; its number, or None if there is nothing to do."""
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        assert op is not None
        before = op.state
        attempt = lifecycle.begin_attempt(
            op, max_attempts, repository.get_tenant(session, op.tenant_id)
        )
        if attempt is None and op.state is not before:
            log.error("operation %s failed: %s", op_id, op.last_error)  # its worker kept dying
        return attempt


def _transition(op_id: uuid.UUID, move: Callable[[Operation], None]) -> None:
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        assert op is not None
        move(op)


def _fail(op_id: uuid.UUID, error: str) -> None:
    log.error("operation %s failed: %s", op_id, error)
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        assert op is not None
        lifecycle.fail(op, error, repository.get_tenant(session, op.tenant_id))


def _release(lease: Lease) -> None:
    """Best effort: with Redis away the lease cannot be released, and it expires by itself."""
    try:
        lease.release()
    except redis.RedisError as exc:
        log.warning("tenant lease not released (%s); it expires by itself", type(exc).__name__)
