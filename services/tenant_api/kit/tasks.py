"""Work done only after commit: a service enqueues a task (or another follow-up) on the session;
the request boundary runs it once the transaction committed, and drops it on rollback, so work
that rolled back is never started."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.celery import send_task

log = logging.getLogger(__name__)
_PENDING = "c3_after_commit"

AfterCommit = Callable[[], Awaitable[None]]


def after_commit(session: AsyncSession, action: AfterCommit) -> None:
    """Run ``action`` once this session's transaction has committed (in the order added)."""
    session.info.setdefault(_PENDING, []).append(action)


def enqueue(session: AsyncSession, task_name: str, operation_id: uuid.UUID) -> None:
    """Send ``task_name(operation_id)`` once this session's transaction has committed."""
    after_commit(session, functools.partial(_send, task_name, operation_id))


def discard(session: AsyncSession) -> None:
    """Forget the follow-ups of a transaction that rolled back."""
    session.info.pop(_PENDING, None)


async def run_after_commit(session: AsyncSession) -> None:
    for action in session.info.pop(_PENDING, []):
        await action()


async def _send(task_name: str, operation_id: uuid.UUID) -> None:
    """If the broker is down the operation stays pending and the reconciler enqueues it later:
    accepted work is never lost."""
    try:
        await asyncio.to_thread(send_task, task_name, str(operation_id))
    except Exception as exc:  # noqa: BLE001 — broker trouble must not fail an accepted request
        log.warning(
            "enqueue of operation %s deferred to reconcile: %s", operation_id, type(exc).__name__
        )
