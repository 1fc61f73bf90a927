"""The lifecycle of tenants and operations: every state change of either goes through here.

Two transition tables say which named transition may move a tenant (``TENANT_TRANSITIONS``)
or an operation (``OPERATION_TRANSITIONS``) from which state to which; a transition from any
other state raises ``IllegalTransition``. Each operation transition is also recorded in the
operation's history (``operation_history``), so it can be read later. The tenant API and the
provisioner call the functions below and never assign ``status``/``state`` themselves.
"""

from __future__ import annotations

import uuid
from enum import Enum, StrEnum
from typing import Any

from platform_core import operation_history as history
from platform_core import webhook_events
from platform_core.errors import IllegalTransition, PermanentError, Superseded
from platform_core.models import (
    Operation,
    OperationKind,
    OperationState,
    Tenant,
    TenantStatus,
    utcnow,
)
from platform_core.operation_history import OperationEvent


class TenantTransition(StrEnum):
    CREATE = "create"  # POST /v1/tenants
    RETRY_PROVISIONING = "retry-provisioning"  # an operator retried a failed provisioning
    PROVISIONED = "provisioned"  # the homeserver runs and its route is published
    SUSPEND = "suspend"
    RESUME = "resume"
    BEGIN_DELETION = "begin-deletion"  # DELETE /v1/tenants/{id}, and its task
    DELETED = "deleted"  # data archived, homeserver gone
    FAIL = "fail"  # the provisioning or deletion operation failed


class OperationTransition(StrEnum):
    START = "start"  # the API records the request
    BEGIN_ATTEMPT = "begin-attempt"
    SCHEDULE_RETRY = "schedule-retry"  # the attempt failed; the next one runs later
    SUCCEED = "succeed"
    FAIL = "fail"
    SUPERSEDE = "supersede"  # the tenant moved on (e.g. deleted while provisioning)
    REQUEUE = "requeue"  # reconcile enqueued it again: its task was lost
    RETRY_REQUESTED = "retry-requested"  # an operator retried the failed operation


_T = TenantStatus
_O = OperationState

# transition → {state before (None: the row is new) → state after}
TENANT_TRANSITIONS: dict[TenantTransition, dict[TenantStatus | None, TenantStatus]] = {
    TenantTransition.CREATE: {None: _T.PROVISIONING},
    TenantTransition.RETRY_PROVISIONING: {_T.FAILED: _T.PROVISIONING},
    # Again from active: a provisioning whose worker died after its last step runs again.
    TenantTransition.PROVISIONED: {_T.PROVISIONING: _T.ACTIVE, _T.ACTIVE: _T.ACTIVE},
    TenantTransition.SUSPEND: {_T.ACTIVE: _T.SUSPENDED, _T.SUSPENDED: _T.SUSPENDED},
    TenantTransition.RESUME: {_T.SUSPENDED: _T.ACTIVE, _T.ACTIVE: _T.ACTIVE},
    TenantTransition.BEGIN_DELETION: {
        _T.PROVISIONING: _T.DELETING,
        _T.ACTIVE: _T.DELETING,
        _T.SUSPENDED: _T.DELETING,
        _T.FAILED: _T.DELETING,
        _T.DELETING: _T.DELETING,
    },
    TenantTransition.DELETED: {_T.DELETING: _T.DELETED, _T.DELETED: _T.DELETED},
    TenantTransition.FAIL: {_T.PROVISIONING: _T.FAILED, _T.DELETING: _T.FAILED},
}

OPERATION_TRANSITIONS: dict[OperationTransition, dict[OperationState | None, OperationState]] = {
    OperationTransition.START: {None: _O.PENDING},
    # From running: the attempt before failed (a retry is scheduled) or its worker died.
    OperationTransition.BEGIN_ATTEMPT: {_O.PENDING: _O.RUNNING, _O.RUNNING: _O.RUNNING},
    OperationTransition.SCHEDULE_RETRY: {_O.RUNNING: _O.RUNNING},
    OperationTransition.SUCCEED: {_O.RUNNING: _O.SUCCEEDED},
    OperationTransition.FAIL: {_O.RUNNING: _O.FAILED},
    OperationTransition.SUPERSEDE: {_O.RUNNING: _O.FAILED},
    OperationTransition.REQUEUE: {_O.PENDING: _O.PENDING, _O.RUNNING: _O.RUNNING},
    OperationTransition.RETRY_REQUESTED: {_O.FAILED: _O.PENDING},
}

# How the operation transitions are named in its history.
_EVENT_OF = {
    OperationTransition.BEGIN_ATTEMPT: OperationEvent.ATTEMPT,
    OperationTransition.SCHEDULE_RETRY: OperationEvent.RETRY,
    OperationTransition.SUCCEED: OperationEvent.SUCCEEDED,
    OperationTransition.FAIL: OperationEvent.FAILED,
    OperationTransition.SUPERSEDE: OperationEvent.SUPERSEDED,
    OperationTransition.REQUEUE: OperationEvent.REQUEUED,
    OperationTransition.RETRY_REQUESTED: OperationEvent.RETRY_REQUESTED,
}

# The tenant transition each kind of operation makes, and how a refusal reads.
_VERB = {
    TenantTransition.SUSPEND: "suspended",
    TenantTransition.RESUME: "resumed",
}


def next_state(table: dict[Any, dict[Any, Any]], transition: Any, current: Any) -> Any:
    """The state ``transition`` moves ``current`` to; ``IllegalTransition`` if it may not."""
    moves = table.get(transition)
    if moves is None:
        raise IllegalTransition(f"unknown transition {transition!r}")
    if current not in moves:
        shown = current.value if isinstance(current, Enum) else current
        raise IllegalTransition(f"{transition} is not allowed from {shown}")
    return moves[current]


# Tenants ------------------------------------------------------------------------------


def tenant_after(tenant: Tenant, transition: TenantTransition) -> TenantStatus:
    """The status ``transition`` would move the tenant to; ``IllegalTransition`` if it may
    not (checked before work whose end makes the transition)."""
    try:
        status: TenantStatus = next_state(TENANT_TRANSITIONS, transition, tenant.status)
    except IllegalTransition:
        if transition in _VERB:
            # The operator-facing wording these refusals always had.
            raise IllegalTransition(
                f"a {tenant.status.value} tenant cannot be {_VERB[transition]}"
            ) from None
        raise
    return status


def _move(tenant: Tenant, transition: TenantTransition) -> None:
    before = tenant.status
    tenant.status = tenant_after(tenant, transition)
    if tenant.status is not before:
        # The outbox row commits with the status it announces (tenant.active, …).
        webhook_events.tenant_status_changed(tenant)


def new_tenant(**fields: Any) -> Tenant:
    """A tenant row as POST /v1/tenants creates it (status ``provisioning``)."""
    return Tenant(status=next_state(TENANT_TRANSITIONS, TenantTransition.CREATE, None), **fields)


def tenant_provisioning(tenant: Tenant) -> None:
    """At the start of a provisioning attempt: stop if the tenant moved on; a failed tenant
    whose provisioning an operator retried is provisioning again."""
    if tenant.status in (TenantStatus.DELETING, TenantStatus.DELETED):
        raise Superseded("tenant was deleted before provisioning finished")
    if tenant.status is TenantStatus.FAILED:
        _move(tenant, TenantTransition.RETRY_PROVISIONING)


def tenant_provisioned(tenant: Tenant) -> None:
    if tenant.status in (TenantStatus.DELETING, TenantStatus.DELETED):
        raise Superseded("tenant was deleted before provisioning finished")
    _move(tenant, TenantTransition.PROVISIONED)


def suspend_tenant(tenant: Tenant) -> None:
    _move(tenant, TenantTransition.SUSPEND)


def resume_tenant(tenant: Tenant) -> None:
    _move(tenant, TenantTransition.RESUME)


def begin_tenant_deletion(tenant: Tenant) -> None:
    """The tenant is being deleted; one already deleted (its task delivered again) stays so."""
    if tenant.status is not TenantStatus.DELETED:
        _move(tenant, TenantTransition.BEGIN_DELETION)


def tenant_deleted(tenant: Tenant) -> None:
    _move(tenant, TenantTransition.DELETED)
    tenant.deleted_at = utcnow()


# Operations ---------------------------------------------------------------------------


def _advance(
    op: Operation, transition: OperationTransition, *, detail: str | None = None, **extra: Any
) -> None:
    before = op.state
    op.state = next_state(OPERATION_TRANSITIONS, transition, op.state)
    history.record(op, _EVENT_OF[transition], detail=detail, **extra)
    if op.state is OperationState.FAILED and before is not OperationState.FAILED:
        webhook_events.operation_failed(op)


def start_operation(
    tenant_id: uuid.UUID, kind: OperationKind, params: dict[str, Any] | None = None
) -> Operation:
    """A new operation row, ``pending`` until a worker begins its first attempt."""
    return Operation(
        tenant_id=tenant_id,
        kind=kind,
        state=next_state(OPERATION_TRANSITIONS, OperationTransition.START, None),
        attempts=0,
        steps_done=[],
        params=params or {},
    )


def begin_attempt(op: Operation, max_attempts: int, tenant: Tenant | None) -> int | None:
    """Start the next attempt; its number, or None if there is nothing (more) to do.

    An attempt that was started but never ended means its worker died (kill -9, OOM): that
    counts as a failed attempt, so a task that kills its worker every time ends ``failed``
    after ``max_attempts`` instead of being redelivered forever. ``tenant`` is the
    operation's tenant, which fails with it if it was being created or deleted."""
    if op.state in (OperationState.SUCCEEDED, OperationState.FAILED):
        return None  # another copy of the task finished it
    if op.state is OperationState.RUNNING and history.attempt_in_progress(op):
        detail = f"attempt {op.attempts} was interrupted: the worker running it died"
        history.record(op, OperationEvent.INTERRUPTED, detail=detail)
        op.last_error = detail
        if op.attempts >= max_attempts:
            fail(op, f"gave up after {op.attempts} attempts: {detail}", tenant)
            return None
    op.state = next_state(OPERATION_TRANSITIONS, OperationTransition.BEGIN_ATTEMPT, op.state)
    op.attempts += 1
    op.started_at = op.started_at or utcnow()
    history.record(op, OperationEvent.ATTEMPT)
    return op.attempts


def record_step(op: Operation, step: str) -> None:
    """A step of the running attempt is done (steps are idempotent: each is kept once)."""
    if step not in op.steps_done:
        op.steps_done = [*op.steps_done, step]
    history.record(op, OperationEvent.STEP, step=step)


def schedule_retry(op: Operation, error: str, delay_s: float) -> None:
    op.last_error = error
    _advance(op, OperationTransition.SCHEDULE_RETRY, detail=error, delay_s=delay_s)


def succeed(op: Operation) -> None:
    _advance(op, OperationTransition.SUCCEED)
    op.finished_at = utcnow()


def supersede(op: Operation, reason: str) -> None:
    """``failed`` because its tenant moved on; the tenant keeps its state."""
    op.last_error = reason
    _advance(op, OperationTransition.SUPERSEDE, detail=reason)
    op.finished_at = utcnow()


def fail(op: Operation, error: str, tenant: Tenant | None) -> None:
    """``failed`` with the error kept; a tenant it was creating or deleting fails with it."""
    op.last_error = error
    _advance(op, OperationTransition.FAIL, detail=error)
    op.finished_at = utcnow()
    if tenant is None:
        return
    if (op.kind, tenant.status) in (
        (OperationKind.PROVISION, TenantStatus.PROVISIONING),
        (OperationKind.DEPROVISION, TenantStatus.DELETING),
    ):
        _move(tenant, TenantTransition.FAIL)


def requeue(op: Operation) -> None:
    """Reconcile enqueues the operation again (its task was lost); its state stays."""
    _advance(op, OperationTransition.REQUEUE, detail="no worker had it; enqueued again")


def retry_requested(op: Operation) -> None:
    """An operator runs a failed operation again, with a fresh attempt budget."""
    op.state = next_state(OPERATION_TRANSITIONS, OperationTransition.RETRY_REQUESTED, op.state)
    op.attempts = 0
    op.finished_at = None
    history.record(op, OperationEvent.RETRY_REQUESTED)


# What the runner does with an attempt's exception -------------------------------------


class Outcome(StrEnum):
    RETRY = "retry"
    FAIL = "fail"
    SUPERSEDE = "supersede"


def outcome_of(exc: BaseException) -> Outcome:
    """Retry policy lives in the exception type: ``Superseded`` supersedes, a
    ``PermanentError`` (an illegal transition among them) fails, and a ``TemporaryError`` —
    or anything unexpected, e.g. a database or Redis connection dropped mid-step — retries
    with backoff until the attempts run out (kopf's rule for arbitrary exceptions)."""
    if isinstance(exc, Superseded):
        return Outcome.SUPERSEDE
    if isinstance(exc, PermanentError):
        return Outcome.FAIL
    return Outcome.RETRY
