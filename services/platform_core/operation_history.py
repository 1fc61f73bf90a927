"""The transitions of a lifecycle operation, kept in order on its row (``Operation.history``).

GET /v1/operations/{id} shows them, so an operator sees every attempt, step, retry delay and
error without reading worker logs. The provisioner, the reconciler and the API all write them
through ``record``, which keeps the list bounded.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from platform_core.models import Operation, utcnow

# Enough for every attempt of a long retry budget; older entries fall off the front.
HISTORY_LIMIT = 100


class OperationEvent(StrEnum):
    ATTEMPT = "attempt"  # an attempt started (``attempt`` is its number)
    STEP = "step"  # a step of the attempt is done (``step``)
    RETRY = "retry"  # the attempt failed and the next one runs after ``delay_s``
    INTERRUPTED = "interrupted"  # the attempt never ended: the worker running it died
    REQUEUED = "requeued"  # reconcile enqueued the operation again: its task was lost
    RETRY_REQUESTED = "retry-requested"  # an operator retried the failed operation
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # the tenant moved on (e.g. deleted while provisioning)


def record(
    op: Operation,
    event: OperationEvent,
    *,
    step: str | None = None,
    detail: str | None = None,
    delay_s: float | None = None,
) -> None:
    """Append one transition (stamped now, UTC, with the operation's attempt number)."""
    entry: dict[str, Any] = {"at": utcnow().isoformat(), "event": event.value}
    entry["attempt"] = op.attempts
    if step is not None:
        entry["step"] = step
    if detail is not None:
        entry["detail"] = detail
    if delay_s is not None:
        entry["delay_s"] = round(delay_s, 3)
    # A new list, not an in-place append: the JSON column only saves what it sees assigned.
    op.history = [*(op.history or []), entry][-HISTORY_LIMIT:]


def _last_transition(op: Operation) -> dict[str, Any] | None:
    """The last entry that says where the operation itself stands (a requeue says nothing
    about the attempt before it)."""
    for entry in reversed(op.history or []):
        if entry.get("event") != OperationEvent.REQUEUED.value:
            return entry
    return None


def retry_due_at(op: Operation) -> datetime | None:
    """When the scheduled next attempt is due, if the last transition scheduled one."""
    last = _last_transition(op)
    if last is None or last.get("event") != OperationEvent.RETRY.value:
        return None
    return datetime.fromisoformat(last["at"]) + timedelta(seconds=float(last["delay_s"]))


def attempt_in_progress(op: Operation) -> bool:
    """True if the last transition started or advanced an attempt that has not ended: seen by
    the next delivery of the task, that attempt's worker died."""
    last = _last_transition(op)
    return last is not None and last.get("event") in (
        OperationEvent.ATTEMPT.value,
        OperationEvent.STEP.value,
    )
